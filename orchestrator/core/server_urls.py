"""ComfyUI server URLs: validated before they are stored, compared to find one server under two names, and
shown without their credentials.

A server URL is ``http(s)://[user:password@]host[:port][/path]``: at most ``MAX_SERVER_URL_LENGTH`` (2048)
characters, printable (no space, no character of the one control-character rule, ``CONTROL``), a host
name or IP literal, a port in 1..65535, no query or fragment. It is stored in one canonical form (lower-case
scheme and host, no default port, no trailing slash), with its credentials, which the orchestrator needs to
reach the server; everything that shows or logs a URL passes it through ``redact`` (``user:***@``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from custom_nodes.urls import CONTROL, DEFAULT_PORTS
from orchestrator.core.errors import InvalidInput

MAX_SERVER_URL_LENGTH = 2048  # why it is not MAX_MEDIA_URL_LENGTH: see there (custom_nodes/urls.py)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
# scheme://userinfo@ inside any text (messages, errors, logged URLs): the userinfo is a credential
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#'\"]+)@")


@dataclass(frozen=True)
class ServerUrl:
    scheme: str
    host: str  # lower-case name, or an IP literal (IPv6 without brackets)
    port: int
    path: str  # "" or "/prefix" (no trailing slash)
    userinfo: str = ""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical URL, with its credentials (what is stored and connected to)."""
        return f"{self.scheme}://{self.userinfo + '@' if self.userinfo else ''}{self.netloc}{self.path}"

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def default_name(self) -> str:
        """host[:port][/path]: the name a server registered without one gets (no credentials in it)."""
        return f"{self.netloc}{self.path}"

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bad(url: str, why: str) -> InvalidInput:
    return InvalidInput(f"server URL {redact(url[:100])!r}{'...' if len(url) > 100 else ''}: {why}")


def parse_server_url(url: str) -> ServerUrl:
    """The canonical form of a server URL, or InvalidInput naming the rule it breaks."""
    if not isinstance(url, str) or not url:
        raise InvalidInput("a server URL is a non-empty string")
    if len(url) > MAX_SERVER_URL_LENGTH:
        raise InvalidInput(f"the server URL is {len(url)} characters long, over the limit "
                           f"max_server_url_length={MAX_SERVER_URL_LENGTH}", limit="max_server_url_length",
                           value=MAX_SERVER_URL_LENGTH)
    if " " in url or CONTROL.search(url):
        raise _bad(url, "it holds a space or a control character")
    if "?" in url or "#" in url:
        raise _bad(url, "a server URL has no query or fragment")
    if "://" not in url:
        raise _bad(url, "it must start with http:// or https://")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise _bad(url, f"not a URL ({exc})") from exc
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _bad(url, "it must start with http:// or https://")
    host = parsed.raw_host.decode("ascii").lower()  # an international name in its IDNA (xn--) form
    if not host:
        raise _bad(url, "it names no host")
    ip = _ip(host)
    if ip is None and not HOST_NAME.match(host):
        raise _bad(url, f"{host[:100]!r} is not a host name or IP address")
    if port is not None and not 1 <= port <= 65535:
        raise _bad(url, f"port {port} is outside 1..65535")
    userinfo = parsed.userinfo.decode("ascii", "replace")
    return ServerUrl(scheme, str(ip) if ip else host.rstrip("."), port or DEFAULT_PORTS[scheme],
                     parsed.raw_path.decode("ascii").rstrip("/"), userinfo)


def canonical(url: str) -> str | None:
    """The canonical form of ``url``, None when it is not a valid server URL."""
    try:
        return parse_server_url(url).url
    except InvalidInput:
        return None


# -- credentials -----------------------------------------------------------------------------------
def redact(text: str) -> str:
    """``text`` (a URL, a message, a log line) with the credentials of every URL in it replaced:
    ``http://user:secret@host`` -> ``http://user:***@host``, ``http://token@host`` -> ``http://***@host``."""

    def hide(m: re.Match[str]) -> str:
        user, sep, _secret = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"

    return _USERINFO.sub(hide, text) if isinstance(text, str) and "@" in text else text


def redact_value(value: Any) -> Any:
    """A JSON value (an error, event data) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


# -- one server under two names ----------------------------------------------------------------------
def comparable_addresses(addresses: Iterable[str]) -> frozenset[str]:
    """Addresses (what a host name resolved to, ``runtime.dns``) as ``same_server`` compares them: without an
    IPv6 zone (``%eth0``), an IPv4-mapped IPv6 address as its IPv4 address."""
    return frozenset(_norm(ipaddress.ip_address(str(a).split("%", 1)[0])) for a in addresses)


def _norm(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _loopback(host: str, addresses: frozenset[str]) -> bool:
    return host in LOOPBACK_NAMES or bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def same_server(a: ServerUrl, a_addresses: frozenset[str], b: ServerUrl, b_addresses: frozenset[str]) -> bool:
    """Whether two URLs reach the same ComfyUI: the same port and path on the same host, where the host is
    the same name, or addresses they share when one side is an IP literal or both are loopback names
    (localhost vs 127.0.0.1). Two different DNS names on one address are not the same server: they may be
    virtual hosts of one reverse proxy. Scheme and credentials do not matter (a port speaks one protocol)."""
    if (a.port, a.path) != (b.port, b.path):
        return False
    if a.host == b.host:
        return True
    by_address = a.is_ip or b.is_ip or (_loopback(a.host, a_addresses) and _loopback(b.host, b_addresses))
    return by_address and bool(a_addresses & b_addresses)


def duplicate_of(candidate: ServerUrl, addresses: frozenset[str],
                 registered: Iterable[tuple[str, ServerUrl, frozenset[str]]]) -> str | None:
    """The name of the registered server (name, url, addresses) that ``candidate`` is another name of."""
    return next((name for name, url, addrs in registered if same_server(candidate, addresses, url, addrs)), None)
