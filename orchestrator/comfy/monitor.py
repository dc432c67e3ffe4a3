"""One websocket per ComfyUI server, shared by every prompt the orchestrator runs there.

Every prompt is submitted with this monitor's client id, so ComfyUI sends its events here; the monitor
hands each event to the subscriber of that prompt_id. The client id must be this monitor's alone: ComfyUI
keeps one socket per client id, so two monitors sharing one (the same server registered under two URLs)
would take each other's socket and events. When the socket drops, every subscriber is told
(its ``recv`` raises ComfyUnreachable once) and the monitor reconnects with backoff. Events are never
replayed by ComfyUI, so followers reconcile through /history and /queue after a drop or a silence.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import unquote, urlsplit

import websocket

from orchestrator.comfy.client import ComfyUnreachable, Connect
from orchestrator.core.server_urls import redact

log = logging.getLogger(__name__)
_DROPPED = object()


class Subscription:
    """The events of one prompt; the same ``recv(timeout)`` as a websocket of its own."""

    def __init__(self, monitor: ServerMonitor, prompt_id: str) -> None:
        self.monitor = monitor
        self.prompt_id = prompt_id
        self.queue: queue.Queue[Any] = queue.Queue()

    def recv(self, timeout: float) -> dict[str, Any] | None:
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _DROPPED:
            raise ComfyUnreachable(f"websocket to {redact(self.monitor.url)} dropped")
        return item

    def close(self) -> None:
        self.monitor.unsubscribe(self.prompt_id)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auth_header(url: str, token: str | None = None) -> str | None:
    """The ``Authorization`` value for a server: ``Bearer <token>``, else Basic from the URL's ``user:password@``
    (percent-decoded, as httpx does for ComfyClient), else None."""
    if token:
        return f"Bearer {token}"
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def ws_url(url: str, client_id: str) -> str:
    """``ws(s)://host[:port][/path]/ws?clientId=ID`` of a server URL, without its credentials (they go in the
    Authorization header: websocket-client ignores a URL's userinfo and would connect without them)."""
    parts = urlsplit(url.rstrip("/"))
    netloc = parts.netloc.rpartition("@")[2]
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{netloc}{parts.path}/ws?clientId={client_id}"


class ServerMonitor:
    """``connect`` opens the socket (default ``websocket.create_connection``; tests pass a fake's). With credentials
    (``token``, or the URL's ``user:password@``) it is called with ``header=["Authorization: ..."]`` too."""

    def __init__(self, url: str, client_id: str, on_state: Callable[[bool, str | None], None] | None = None,
                 max_backoff_s: float = 30.0, connect: Connect | None = None, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.connect = connect or websocket.create_connection
        self.client_id = client_id
        self.on_state = on_state or (lambda up, error: None)
        self.max_backoff_s = max_backoff_s
        self.connected = threading.Event()
        self.sessions = 0  # websocket connections made so far: a new one may be a restarted server
        self._auth = auth_header(self.url, token)
        self._subs: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._thread = threading.Thread(target=self._run, name=f"ws {redact(self.url)}", daemon=True)

    def __repr__(self) -> str:
        return f"ServerMonitor({redact(self.url)!r}, {self.client_id!r})"

    def start(self) -> ServerMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.reset()
        self._thread.join(5)

    def reset(self) -> None:
        """Drop the socket now (e.g. the health check found the server hung); it reconnects by itself."""
        ws = self._ws
        if ws is not None:
            with suppress(Exception):
                ws.abort()

    def subscribe(self, prompt_id: str) -> Subscription:
        sub = Subscription(self, prompt_id)
        with self._lock:
            self._subs[prompt_id] = sub
        if not self.connected.is_set():
            sub.queue.put(_DROPPED)  # the follower starts reconciling by polling at once
        return sub

    def unsubscribe(self, prompt_id: str) -> None:
        with self._lock:
            self._subs.pop(prompt_id, None)

    def _run(self) -> None:
        url = ws_url(self.url, self.client_id)
        extra = {"header": [f"Authorization: {self._auth}"]} if self._auth else {}
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._ws = self.connect(url, timeout=5, **extra)
                self._ws.settimeout(None)
            except websocket.WebSocketBadStatusException as exc:
                refused = exc.status_code in (401, 403)
                why = (f"the server refused our credentials ({exc.status_code})" if refused and self._auth else
                       f"the server wants credentials ({exc.status_code})" if refused else
                       f"handshake answered {exc.status_code}")
                self.on_state(False, f"websocket: {why}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                self.on_state(False, f"websocket: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.5
            self.sessions += 1
            self.connected.set()
            self.on_state(True, None)
            try:
                while not self._stop.is_set():
                    frame = self._ws.recv()
                    if isinstance(frame, str) and frame:
                        self._route(json.loads(frame))
                    elif frame in ("", b"", None):
                        raise websocket.WebSocketConnectionClosedException("closed by the server")
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                if not self._stop.is_set():
                    log.warning("websocket to %s dropped: %s", redact(self.url), redact(str(exc)))
                    self.on_state(False, f"websocket dropped: {exc}")
            finally:
                self.connected.clear()
                with suppress(Exception):
                    self._ws.close()
                self._ws = None
                with self._lock:
                    subs = list(self._subs.values())
                for sub in subs:
                    sub.queue.put(_DROPPED)

    def _route(self, event: dict[str, Any]) -> None:
        pid = (event.get("data") or {}).get("prompt_id")
        if pid is None:
            return
        with self._lock:
            sub = self._subs.get(pid)
        if sub is not None:
            sub.queue.put(event)
