"""A typed client for one ComfyUI server's HTTP API (its websocket events are followed by comfy/monitor.py).

Every call that names a prompt uses our own ``prompt_id`` (the attempt id), so after any crash the
orchestrator can ask the server about exactly that run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx
import websocket

from orchestrator.core.errors import MediaLabError
from orchestrator.core.graph import title_of
from orchestrator.core.server_urls import redact


class ComfyError(MediaLabError):
    status = 502
    title = "ComfyUI error"


class ComfyUnreachable(ComfyError):
    status = 503
    title = "ComfyUI unreachable"


class ComfyAuthError(ComfyError):
    """The server (or the reverse proxy in front of it) answered 401/403: our credentials were refused, or it
    wants some and none were given. Retrying with the same credentials cannot help."""

    title = "ComfyUI refused our credentials"


class ComfyValidationError(ComfyError):
    """ComfyUI refused the graph; ``node_errors`` is ComfyUI's own per-node report."""

    status = 422
    title = "ComfyUI rejected the graph"

    def __init__(self, message: str, error: dict[str, Any], node_errors: dict[str, Any],
                 titles: dict[str, str] | None = None) -> None:
        self.error = error
        self.node_errors = node_errors
        super().__init__(describe_node_errors(message, node_errors, titles or {}),
                         comfy_error=error, node_errors=node_errors)


def describe_node_errors(message: str, node_errors: dict[str, Any], titles: dict[str, str]) -> str:
    """One readable line per failing input: node title, id, class, input name and ComfyUI's reason."""
    lines = [message]
    for node_id, report in node_errors.items():
        title = titles.get(node_id) or node_id
        for err in report.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            where = f"node '{title}' (#{node_id} {report.get('class_type', '?')})"
            if name:
                where += f" input '{name}'"
            lines.append(f"{where}: {err.get('message', '')}: {err.get('details', '')}".rstrip(": "))
    return "; ".join(lines)


@dataclass(frozen=True)
class FileRef:
    """A file ComfyUI reports in an output's ui dict (images, gifs, videos, audio, ...)."""

    filename: str
    subfolder: str
    type: str

    @property
    def params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


Connect = Callable[..., websocket.WebSocket]
"""Opens a websocket (``ServerMonitor``'s): ``connect(url, timeout=...)`` like ``websocket.create_connection`` (the
default), plus ``header=["Authorization: ..."]`` when the server wants credentials; tests pass one that returns an
in-process fake with the same ``recv``/``settimeout``/``close``/``abort``."""


class ComfyClient:
    """``transport`` (any httpx.BaseTransport, e.g. httpx.MockTransport) replaces the network for tests, as
    httpx's own ``transport`` does; by default the real HTTP is used.

    Credentials, for a server behind an authenticating reverse proxy: ``token`` sends ``Authorization: Bearer
    <token>`` with every request; without one, the URL's ``user:password@`` goes in a Basic auth header (the token
    wins when both are given). Neither ever appears in a request URL, an error message or the repr. A 401/403
    answer raises ``ComfyAuthError``.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
                 token: str | None = None) -> None:
        # Credentials of the URL (http://user:password@host) go in a Basic auth header, never in the URLs
        # of requests: httpx logs every request's URL.
        url = httpx.URL(base_url.rstrip("/"))
        auth = httpx.BasicAuth(url.username, url.password) if url.userinfo and not token else None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._credentials = bool(token or url.userinfo)
        self.base_url = str(url.copy_with(userinfo=b"")).rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, auth=auth, headers=headers,
                                  transport=transport)

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r}{', with credentials' if self._credentials else ''})"

    def close(self) -> None:
        self._http.close()

    def _refused(self, method: str, path: str, r: httpx.Response) -> None:
        """Raise ComfyAuthError on a 401, and on a 403 when we sent credentials (without any, a 403 is ComfyUI's
        own refusal, e.g. of an origin or a path: the usual ComfyError). The body is left out: a proxy's page
        says nothing more."""
        if r.status_code == 401 or r.status_code == 403 and self._credentials:
            why = ("refused our credentials" if self._credentials
                   else "wants credentials (none are configured for it)")
            raise ComfyAuthError(f"{method} {path} -> {r.status_code}: the server {why}")

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ComfyUnreachable(redact(f"{self.base_url}{path}: {exc}")) from exc
        self._refused(method, path, r)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._request(method, path, **kw)
        if r.status_code >= 400:
            raise ComfyError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    # -- prompts -----------------------------------------------------------------------------------
    def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str,
               extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id,
                "extra_data": extra_data or {}}
        r = self._request("POST", "/prompt", json=body)
        data = r.json() if r.content else {}
        if r.status_code == 400 or data.get("node_errors") and r.status_code >= 400:
            error = data.get("error") or {}
            titles = {k: title_of(v) or "" for k, v in graph.items()}
            raise ComfyValidationError(error.get("message", "invalid prompt"), error,
                                       data.get("node_errors") or {}, titles)
        if r.status_code >= 400:
            raise ComfyError(f"POST /prompt -> {r.status_code}: {r.text[:500]}")
        return data

    def history(self, prompt_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None (ComfyUI answers {} for running and unknown alike).
        ``timeout``: a server that does not answer in time is unreachable (hung), whatever the client's default."""
        data = self._json("GET", f"/history/{prompt_id}", **({"timeout": timeout} if timeout else {}))
        return (data or {}).get(prompt_id)

    def queue(self, timeout: float | None = None) -> dict[str, list]:
        return self._json("GET", "/queue", **({"timeout": timeout} if timeout else {}))

    def queue_position(self, prompt_id: str, timeout: float | None = None) -> str | None:
        """'running', 'pending' or None when the server's queue does not hold the prompt."""
        q = self.queue(timeout)
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            if any(item[1] == prompt_id for item in q.get(key, [])):
                return state
        return None

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt the prompt only if it is the one running (never a bare interrupt)."""
        self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    def delete_queued(self, *prompt_ids: str) -> None:
        self._json("POST", "/queue", json={"delete": list(prompt_ids)})

    # -- files -------------------------------------------------------------------------------------
    def upload(self, data: BinaryIO | bytes, filename: str, subfolder: str = "", kind: str = "input") -> str:
        """Upload an input file; returns the name to put in a loader node (ComfyUI may rename it)."""
        files = {"image": (filename, data, "application/octet-stream")}
        form = {"type": kind, "subfolder": subfolder, "overwrite": "false"}
        out = self._json("POST", "/upload/image", files=files, data=form)
        return f"{out['subfolder']}/{out['name']}" if out.get("subfolder") else out["name"]

    def stream_view(self, ref: FileRef, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", "/view", params=ref.params) as r:
                self._refused("GET", "/view", r)
                if r.status_code >= 400:
                    raise ComfyError(f"GET /view {ref.filename} -> {r.status_code}")
                yield from r.iter_bytes(chunk_size)
        except httpx.TransportError as exc:
            raise ComfyUnreachable(redact(f"{self.base_url}/view: {exc}")) from exc

    # -- capabilities ------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return self._json("GET", f"/object_info/{node_class}" if node_class else "/object_info")

    def pack_info(self) -> dict[str, Any] | None:
        """The project's node pack on this server (/medialab/info), or None when it is not installed."""
        r = self._request("GET", "/medialab/info")
        return r.json() if r.status_code == 200 else None

    def models_folders(self) -> list[str]:
        return self._json("GET", "/models")

    def models(self, folder: str) -> list[str]:
        r = self._request("GET", f"/models/{folder}")
        if r.status_code == 404:
            return []
        if r.status_code >= 400:
            raise ComfyError(f"GET /models/{folder} -> {r.status_code}")
        return r.json()

    def system_stats(self, timeout: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/system_stats", **({"timeout": timeout} if timeout else {}))


def output_files(ui: dict[str, Any]) -> list[FileRef]:
    """Every file in one node's ui output, whatever the key (images, gifs, video, audio, ...)."""
    refs: list[FileRef] = []
    for value in ui.values():
        if isinstance(value, list):
            refs += [FileRef(v["filename"], v.get("subfolder", ""), v.get("type", "output"))
                     for v in value if isinstance(v, dict) and "filename" in v]
    return refs
