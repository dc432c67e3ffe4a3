"""What a media input may fetch: the URL rule, shared by the orchestrator and the node pack.

Standard library only (it imports nothing of ComfyUI or the orchestrator), so the one implementation runs
on both sides. The decisions are pure functions; DNS resolution and the fetch itself are the I/O edge
(``resolve``, ``fetch``), kept apart so the rule can be tested without a network.

The rule: scheme http or https; no credentials in the URL; the origin (scheme, host, port) is in the
allowlist, or is the object store's own endpoint and the URL is a presigned one for a stored object
(``/<bucket>/sha256/<2 hex>/<64 hex>`` with ``X-Amz-Credential`` and ``X-Amz-Signature``: nothing else on
the store's origin, which may be a private address, is reachable); after DNS
resolution no address may be link-local (169.254/16 with the cloud metadata servers, fe80::/10),
multicast, unspecified, reserved or "this network" (0/8); private and loopback addresses only with
``private_ok`` or for the store's endpoint. The fetch connects to an address that was checked (no second
DNS lookup a rebinding server could answer differently), checks every redirect the same way (at most
``max_redirects``), and stops at ``max_bytes`` and after ``timeout_s`` in all.

A stored object is named by its key, exactly ``sha256/<first 2 hex>/<64 hex>`` (``is_object_key``).

The one control-character rule of the project lives here too (``CONTROL``: C0, DEL and C1), so that the
orchestrator and the pack agree on it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urljoin, urlsplit

Origin = tuple[str, str, int]  # (scheme, host: lowercase, IDNA, IPv6 without brackets, port)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}
# A media URL (a URL input of a loader, an allowlist's or the store's presigned URL) may be long: a presigned
# query (credential, signature, response headers) easily passes 1 KB; 8192 is the request line most HTTP
# servers accept. A ComfyUI server URL (orchestrator/server_urls.py) is an origin and a path prefix with no
# query, and has the shorter MAX_SERVER_URL_LENGTH.
MAX_MEDIA_URL_LENGTH = 8192
# The control characters: C0 (incl. NUL, tab, newline), DEL and C1. CONTROL_CHARS is the body of a regex
# character class, for patterns built from it (``rf"^[^{CONTROL_CHARS}]+$"``, pydantic ``pattern=``).
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
CONTROL = re.compile(f"[{CONTROL_CHARS}]")
PRESIGNED = ("X-Amz-Credential", "X-Amz-Signature")  # query fields every presigned store URL carries
REDIRECTS = (301, 302, 303, 307, 308)
KEY = re.compile(r"sha256/([0-9a-f]{2})/([0-9a-f]{64})")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
# Cloud metadata servers outside the link-local range (Alibaba, AWS over IPv6): never, even with private_ok.
METADATA = frozenset(ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "fd00:ec2::23"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(ValueError):
    """A URL (or one of its redirects) that the rule does not allow; the message names the rule."""


class FetchError(Exception):
    """A fetch that was allowed but failed or went over a limit (size, time, redirects)."""


def is_object_key(value: object) -> bool:
    """``sha256/<2 hex>/<64 hex>``, the two hex being the first two of the 64, nothing more or less."""
    m = KEY.fullmatch(value) if isinstance(value, str) else None
    return bool(m) and m.group(2).startswith(m.group(1))


def is_url(value: object) -> bool:
    """Whether a value is meant as a URL (any ``scheme://``), allowed or not."""
    return isinstance(value, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


@dataclass(frozen=True)
class UrlPolicy:
    allowlist: frozenset[Origin] = frozenset()
    store: Origin | None = None  # the object store's endpoint: its presigned URLs are always allowed
    store_bucket: str = "medialab"  # the bucket whose objects those URLs may name
    private_ok: bool = False
    max_bytes: int = 2 << 30
    timeout_s: float = 60.0
    max_redirects: int = 3
    allowlist_text: tuple[str, ...] = field(default=(), compare=False)  # as configured, for messages

    @classmethod
    def build(cls, allowlist: Iterable[str] = (), store_endpoint: str | None = None, store_secure: bool = False,
              private_ok: bool = False, max_bytes: int = 2 << 30, timeout_s: float = 60.0,
              max_redirects: int = 3, store_bucket: str = "medialab") -> UrlPolicy:
        """From settings; a malformed allowlist entry raises UrlRefused naming it."""
        entries = tuple(e.strip() for e in allowlist if e and e.strip())
        store = None
        if store_endpoint:
            store = parse_origin(("https://" if store_secure else "http://") + store_endpoint.strip().rstrip("/"))
        return cls(frozenset(parse_origin(e) for e in entries), store, store_bucket.strip(), private_ok, max_bytes,
                   timeout_s, max_redirects, entries)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UrlPolicy:
        """The node pack's policy, from its server's environment: MEDIALAB_URL_ALLOWLIST (comma-separated
        origins, or a JSON list), MEDIALAB_URL_PRIVATE_OK, MEDIALAB_URL_MAX_BYTES, MEDIALAB_URL_TIMEOUT_S and
        the store MEDIALAB_S3_ENDPOINT (+ MEDIALAB_S3_SECURE, MEDIALAB_S3_BUCKET)."""
        env = os.environ if env is None else env
        raw = env.get("MEDIALAB_URL_ALLOWLIST", "").strip()
        entries = json.loads(raw) if raw.startswith("[") else raw.split(",")
        return cls.build(entries, env.get("MEDIALAB_S3_ENDPOINT") or None, _true(env.get("MEDIALAB_S3_SECURE")),
                         _true(env.get("MEDIALAB_URL_PRIVATE_OK")),
                         int(env.get("MEDIALAB_URL_MAX_BYTES") or 2 << 30),
                         float(env.get("MEDIALAB_URL_TIMEOUT_S") or 60.0),
                         store_bucket=env.get("MEDIALAB_S3_BUCKET") or "medialab")

    def describe(self) -> str:
        return (f"url_allowlist (MEDIALAB_URL_ALLOWLIST) is {list(self.allowlist_text)}"
                + (f"; the object store {format_origin(self.store)} is always allowed for presigned URLs of "
                   f"its objects (/{self.store_bucket}/sha256/<2 hex>/<64 hex>)" if self.store else ""))


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Target:
    """A URL that passed the pure rule: where to connect, once its addresses are checked too."""

    url: str
    origin: Origin
    is_store: bool

    @property
    def scheme(self) -> str:
        return self.origin[0]

    @property
    def host(self) -> str:
        return self.origin[1]

    @property
    def port(self) -> int:
        return self.origin[2]


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def normalize_host(host: str) -> str:
    """Lowercase, no trailing dot, IDNA; an IP literal in its one canonical form. Numeric hosts that only
    some parsers read as an address (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``) are refused."""
    host = host.strip().lower().rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if "%" in host:
            raise UrlRefused(f"IPv6 zone ids ({host!r}) are not allowed")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError as exc:
            raise UrlRefused(f"{host!r} is not a valid IPv6 address") from exc
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise UrlRefused(f"numeric host {host!r} is ambiguous (decimal, octal or hex forms are not allowed): "
                             "write an IPv4 address as four decimal numbers") from None
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRefused(f"host {host!r} is not a valid host name") from exc


def parse_origin(text: str) -> Origin:
    """``scheme://host[:port]`` (a trailing ``/`` is fine) as an Origin; anything else raises UrlRefused."""
    try:
        parts = urlsplit(str(text).strip())
    except ValueError as exc:
        raise UrlRefused(f"allowlist entry {text!r} is not an origin (http(s)://host[:port])") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/") or parts.query \
            or parts.fragment or "@" in parts.netloc:
        raise UrlRefused(f"allowlist entry {text!r} is not an origin (http(s)://host[:port])")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise UrlRefused(f"allowlist entry {text!r} has a bad port") from exc
    return scheme, normalize_host(parts.hostname or ""), port


def check_url(url: str, policy: UrlPolicy) -> Target:
    """The pure part of the rule (no DNS): syntax, scheme, no credentials, an allowed origin; an IP literal
    is checked as an address at once. Raises UrlRefused naming the rule."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("not a URL")
    shown = url[:100] + ("..." if len(url) > 100 else "")
    if len(url) > MAX_MEDIA_URL_LENGTH:
        raise UrlRefused(f"URL is {len(url)} characters long, longer than the limit "
                         f"MAX_MEDIA_URL_LENGTH={MAX_MEDIA_URL_LENGTH}")
    if not url.isascii() or " " in url or CONTROL.search(url) or "\\" in url:
        raise UrlRefused(f"{shown!r}: a URL must be ASCII without spaces, control characters or backslashes "
                         "(percent-encode them; IDNA for host names)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UrlRefused(f"{shown!r}: not a URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused(f"{shown!r}: only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise UrlRefused(f"{shown!r}: credentials in a URL (user@host) are not allowed")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise UrlRefused(f"{shown!r}: bad port") from exc
    origin = (scheme, normalize_host(parts.hostname or ""), port)
    is_store = origin == policy.store  # the store's origin has its own rule, allowlisted or not
    if is_store:
        problem = store_url_problem(parts.path, parts.query, policy.store_bucket)
        if problem:
            raise UrlRefused(f"{shown!r}: the object store {format_origin(origin)} is allowed only for presigned "
                             f"URLs of stored objects: {problem}")
    elif origin not in policy.allowlist:
        raise UrlRefused(f"{shown!r}: origin {format_origin(origin)} is not allowed: {policy.describe()}")
    target = Target(url, origin, is_store)
    try:
        literal = ipaddress.ip_address(origin[1])
    except ValueError:
        return target
    check_addresses(target, [literal], policy)
    return target


def store_url_problem(path: str, query: str, bucket: str) -> str | None:
    """Why a URL on the store's origin is not a presigned URL of one stored object, or None: the path must be
    exactly ``/<bucket>/<object key>`` and the query must carry every field of ``PRESIGNED``."""
    prefix = f"/{bucket}/"
    if not bucket or not path.startswith(prefix) or not is_object_key(path[len(prefix):]):
        return f"the path must be /{bucket}/sha256/<2 hex>/<64 hex> (bucket {bucket!r}, MEDIALAB_S3_BUCKET)"
    fields = parse_qs(query)
    lacking = [f for f in PRESIGNED if not fields.get(f)]
    if lacking:
        return f"the query lacks {' and '.join(lacking)} (not a presigned URL)"
    return None


def _embedded_v4(addr: Address) -> ipaddress.IPv4Address | None:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            return addr.ipv4_mapped
        if addr.sixtofour:
            return addr.sixtofour
        if addr.teredo:
            return addr.teredo[1]
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_problem(addr: Address, private_ok: bool) -> str | None:
    """Why an address may not be fetched from, or None. Link-local, multicast, unspecified, reserved and
    0/8 never; private, loopback and other non-global ranges only with ``private_ok``."""
    inner = _embedded_v4(addr)
    if inner is not None:  # an IPv4 address inside an IPv6 one: both must pass (mapped, NAT64: the IPv4 decides)
        problem = address_problem(inner, private_ok)
        if problem or (isinstance(addr, ipaddress.IPv6Address) and (addr.ipv4_mapped or addr in _NAT64)):
            return problem and f"{addr} embeds {problem}"
    if addr in METADATA:
        return f"{addr} is a cloud metadata address"
    if addr.is_link_local:
        return f"{addr} is link-local (cloud metadata lives there)"
    if addr.is_multicast:
        return f"{addr} is multicast"
    if addr.is_unspecified or (isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK):
        return f"{addr} is unspecified ('this host')"
    if addr.is_reserved and not addr.is_loopback:  # ::1 lies in the reserved ::/8
        return f"{addr} is reserved"
    if not addr.is_global and not private_ok:
        kind = "loopback" if addr.is_loopback else "private"
        return f"{addr} is a {kind} address and url_private_ok (MEDIALAB_URL_PRIVATE_OK) is false"
    return None


def check_addresses(target: Target, addresses: Iterable[str | Address], policy: UrlPolicy) -> list[Address]:
    """The addresses the host resolved to, each checked; one bad address refuses the URL (a name that
    resolves to a public and a metadata address is not allowed). The store's endpoint may be private."""
    found: list[Address] = []
    for a in addresses:
        addr = ipaddress.ip_address(a.split("%", 1)[0]) if isinstance(a, str) else a
        problem = address_problem(addr, policy.private_ok or target.is_store)
        if problem:
            raise UrlRefused(f"{format_origin(target.origin)} resolves to an address that is not allowed: {problem}")
        if addr not in found:
            found.append(addr)
    if not found:
        raise UrlRefused(f"{format_origin(target.origin)} resolves to no address")
    return found


# -- the I/O edge ------------------------------------------------------------------------------------
def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (an IP literal is itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} cannot be resolved: {exc}") from exc
    return [str(info[4][0]) for info in infos]


class _Pinned(http.client.HTTPConnection):
    """HTTP to an address that was checked; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """HTTPS to an address that was checked; SNI and the certificate are checked against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def fetch(url: str, out: BinaryIO, policy: UrlPolicy, max_bytes: int | None = None,
          resolver: Callable[[str, int], list[str]] = resolve, tls: ssl.SSLContext | None = None) -> int:
    """Write the body of ``url`` to ``out``; returns its size. Every hop (redirect) is checked by the rule
    and connected to a checked address; UrlRefused for a URL the rule refuses, FetchError for a failure or
    a limit (``max_bytes``, ``policy.timeout_s`` in all, ``policy.max_redirects``)."""
    cap = min(max_bytes or policy.max_bytes, policy.max_bytes)
    deadline = time.monotonic() + policy.timeout_s
    shown = url[:100]
    for _hop in range(policy.max_redirects + 1):
        target = check_url(url, policy)
        addresses = check_addresses(target, resolver(target.host, target.port), policy)
        conn = _open(target, addresses, deadline, tls, policy)
        sock = conn.sock  # kept: http.client hands the socket to the response and forgets it
        aborted = threading.Event()
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _abort, (sock, aborted))
        timer.daemon = True
        timer.start()
        try:
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "medialab-node-pack", "Accept-Encoding": "identity"})
            response = conn.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{shown}: redirect {response.status} without a Location")
                url = urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise FetchError(f"{shown}: the server answered {response.status} {response.reason}")
            declared = response.getheader("Content-Length")
            length = int(declared) if declared and declared.isdigit() else None
            if length is not None and length > cap:
                raise FetchError(f"{shown}: {length} bytes is over the limit of {cap} bytes "
                                 "(url_max_bytes, MEDIALAB_URL_MAX_BYTES, or the node's max_mb)")
            total = 0
            while chunk := _read(response, sock, deadline):
                total += len(chunk)
                if total > cap:
                    raise FetchError(f"{shown}: more than the limit of {cap} bytes "
                                     "(url_max_bytes, MEDIALAB_URL_MAX_BYTES, or the node's max_mb)")
                out.write(chunk)
            if aborted.is_set() or time.monotonic() > deadline:
                raise TimeoutError
            if length is not None and total != length:
                raise FetchError(f"{shown}: the body ended after {total} of {length} bytes")
            return total
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if aborted.is_set() or time.monotonic() >= deadline - 0.01:
                raise FetchError(f"{shown}: took longer than the limit of {policy.timeout_s:g} s "
                                 "(url_timeout_s, MEDIALAB_URL_TIMEOUT_S)") from exc
            raise FetchError(f"{shown}: {exc!r}") from exc
        finally:
            timer.cancel()
            conn.close()
            sock.close()
    raise FetchError(f"{shown}: more than {policy.max_redirects} redirects")


def _open(target: Target, addresses: list[Address], deadline: float, tls: ssl.SSLContext | None,
          policy: UrlPolicy) -> http.client.HTTPConnection:
    """A connection to the first checked address that answers."""
    error: Exception | None = None
    for addr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedTLS(target.host, target.port, str(addr), remaining, tls or ssl.create_default_context())
        else:
            conn = _Pinned(target.host, target.port, str(addr), remaining)
        try:
            conn.connect()
            return conn
        except OSError as exc:
            conn.close()
            error = exc
    if error is None:
        raise FetchError(f"{format_origin(target.origin)}: took longer than the limit of {policy.timeout_s:g} s "
                         "(url_timeout_s, MEDIALAB_URL_TIMEOUT_S)")
    raise FetchError(f"{format_origin(target.origin)}: cannot connect: {error}")


def _read(response: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bytes:
    """The next piece of the body, waiting no longer than the time left."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    return response.read1(1 << 20)


def _abort(sock: socket.socket, aborted: threading.Event) -> None:
    """The total time is up: wake a read that is blocked on a server that trickles (headers included)."""
    aborted.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def fetch_to_file(url: str, dest: Path, policy: UrlPolicy, max_bytes: int | None = None,
                  resolver: Callable[[str, int], list[str]] = resolve) -> int:
    """``fetch`` into a file; a partial file is removed."""
    try:
        with dest.open("wb") as f:
            return fetch(url, f, policy, max_bytes, resolver)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
