"""Inputs sent to a ComfyUI server ahead of the attempt that needs them (the through byte path).

An input's name on a server is its content hash (``<sha256><suffix>`` in the ``medialab`` subfolder), so the
same bytes uploaded twice are the same file there. ``Staging`` remembers which inputs each server already holds
and lets an attempt skip their upload, and ``ahead`` sends a freshly uploaded input at once, in a background
thread, to the few local servers that would take it by upload: while the client writes its job, the bytes are
already travelling, and the attempt finds them there.

What a server holds is remembered per websocket session of its monitor: a reconnect may be a restart with an
empty input folder, so everything known of it is forgotten then. A prompt that fails because a remembered file
is gone anyway (``forget``) is submitted once more with fresh uploads (``Executor``).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.server_urls import redact
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.db.tables import Artifact
    from orchestrator.runtime.pool import Pool, Server

log = logging.getLogger(__name__)
SUBFOLDER = "medialab"
WAIT_S = 60.0  # an attempt waits this long at most for an upload already under way, then uploads itself
KNOWN_MAX = 50_000  # remembered inputs per server; the oldest are forgotten past it (they upload again)


def upload_name(art: Artifact) -> str:
    """The input's file name on a server: its content hash and its own suffix (ComfyUI's loaders look at it)."""
    return art.sha256 + Path(art.filename).suffix.lower()


class Staging:
    """``ahead_servers``: at most this many local servers get an input ahead (0: never; a pool larger than that
    gets the bytes at claim time only, as the attempt's server is not known before)."""

    def __init__(self, store: ObjectStore, pool: Pool | None = None, ahead_servers: int = 2,
                 byte_path: str = "auto") -> None:
        self.store = store
        self.pool = pool
        self.ahead_servers = ahead_servers
        self.byte_path = byte_path  # MEDIALAB_BYTE_PATH: a server that will read the input itself gets nothing
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], dict[str, Future[str]]] = {}  # (url, ws session) -> name -> upload
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stage")
        self.bytes_sent = 0

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- what a server holds ------------------------------------------------------------------------
    def _slot(self, server: Server) -> dict[str, Future[str]]:
        session = server.monitor.sessions if server.monitor is not None else 0
        key = (server.url, session)
        with self._lock:
            slot = self._known.get(key)
            if slot is None:  # a new session of this server: what an earlier one held is forgotten
                for old in [k for k in self._known if k[0] == server.url]:
                    del self._known[old]
                slot = self._known[key] = {}
            return slot

    def put(self, server: Server, art: Artifact) -> tuple[str, bool]:
        """The name to bind for ``art`` on ``server``, uploading it unless the server holds it or an upload is
        under way (then it is waited for); ``(name, True)`` when it was already there (not sent by this call)."""
        name = upload_name(art)
        slot = self._slot(server)
        with self._lock:
            fut = slot.get(name)
            mine = fut is None
            if mine:
                fut = slot[name] = Future()
                while len(slot) > KNOWN_MAX:
                    slot.pop(next(iter(slot)))
        assert fut is not None
        if mine:
            self._send(server, art, name, fut)
            return fut.result(), False
        try:
            return fut.result(timeout=WAIT_S), True
        except Exception:  # that upload failed or hangs: this attempt sends the bytes itself
            self._drop(slot, name, fut)
            return self.put(server, art)

    def _send(self, server: Server, art: Artifact, name: str, fut: Future[str]) -> None:
        assert server.client is not None
        try:
            with self.store.open(art.key) as f:
                fut.set_result(server.client.upload(f, name, subfolder=SUBFOLDER))
            with self._lock:
                self.bytes_sent += art.size
        except BaseException as exc:
            fut.set_exception(exc)
            self._drop(self._slot(server), name, fut)
            raise

    def _drop(self, slot: dict[str, Future[str]], name: str, fut: Future[str]) -> None:
        with self._lock:
            if slot.get(name) is fut:
                del slot[name]

    def forget(self, server: Server, names: list[str] | None = None) -> None:
        """The server does not hold these inputs after all (``None``: anything)."""
        slot = self._slot(server)
        with self._lock:
            for name in list(slot) if names is None else names:
                slot.pop(name, None)

    # -- ahead of the job ---------------------------------------------------------------------------
    def ahead(self, art: Artifact) -> int:
        """Send a just-stored input to the healthy local servers that take inputs by upload, in the background,
        when there are at most ``ahead_servers`` of them; how many uploads were started."""
        if self.pool is None or self.ahead_servers <= 0 or not art.content_type.startswith(("image/", "video/")):
            return 0
        servers = [s for s in self.pool.servers if s.tier == 0 and s.healthy and s.active and s.client is not None
                   and self._by_upload(s, art)]
        if not servers or len(servers) > self.ahead_servers:
            return 0
        for server in servers:
            self._threads.submit(self._ahead_one, server, art)
        return len(servers)

    def _ahead_one(self, server: Server, art: Artifact) -> None:
        try:
            self.put(server, art)
        except Exception as exc:  # only a head start: the attempt uploads it itself
            log.info("input %s not sent ahead to %s: %s", art.id, redact(server.url), exc)


    def _by_upload(self, server: Server, art: Artifact) -> bool:
        """Whether ``server`` would take ``art`` by upload (``core/byte_path.choose``'s rule without the template:
        a server with the pack on our bucket reads inputs from the store itself under the ``auto`` path)."""
        if self.byte_path == "direct" or server.caps is None or art.size > server.caps.max_upload_bytes:
            return False
        storage = (server.caps.pack or {}).get("storage") or {}
        return self.byte_path == "through" or not (self.store.bucket and storage.get("bucket") == self.store.bucket)
