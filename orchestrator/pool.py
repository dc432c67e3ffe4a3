"""The pool of ComfyUI servers: registry sync, health checks with backoff, capabilities, websockets.

The database holds the registry (servers from the config file, the API or the CLI) and each server's last
known health and capabilities, so every orchestrator process and the CLI see the same pool. This module
keeps the live side: one ComfyClient and one ServerMonitor (websocket) per server, and a background
thread that syncs with the registry, checks health (backing off on failures) and refreshes capabilities.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from orchestrator import service
from orchestrator.capabilities import Capabilities, ModelRef, Requirements
from orchestrator.comfy.client import ComfyClient, ComfyError
from orchestrator.comfy.monitor import ServerMonitor
from orchestrator.db import Database
from orchestrator.errors import Unavailable
from orchestrator.models import ServerRow
from orchestrator.placement import ServerView, unrunnable_reason

log = logging.getLogger(__name__)


class MissingCapability(Unavailable):
    status = 422
    title = "No server can run this job"


def probe(client: ComfyClient) -> Capabilities:
    """Read a server's node classes, model files, versions and VRAM."""
    stats = client.system_stats()
    object_info = client.object_info()
    folders = client.models_folders()
    return Capabilities.from_probe(object_info, {f: client.models(f) for f in folders}, stats, client.pack_info())


@dataclass
class Server:
    """The live side of one registered server."""

    id: str
    name: str
    url: str
    client: ComfyClient
    monitor: ServerMonitor
    active: bool = True
    healthy: bool = False
    caps: Capabilities | None = None
    warm: frozenset[ModelRef] = frozenset()
    failures: int = 0
    next_check: float = 0.0
    refreshed: float = 0.0

    @property
    def comfy_version(self) -> str | None:
        return self.caps.comfy_version if self.caps else None

    def view(self, inflight: int = 0) -> ServerView:
        return ServerView(self.id, self.url, self.healthy, self.active, self.caps, inflight, self.warm)


class Pool:
    def __init__(self, db: Database, client_id: str, health_interval_s: float = 5.0,
                 refresh_interval_s: float = 300.0, sync_interval_s: float = 2.0) -> None:
        self.db = db
        self.client_id = client_id
        self.health_interval_s = health_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.sync_interval_s = sync_interval_s
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_model_load = lambda server, models: None  # metrics hook

    # -- registry ---------------------------------------------------------------------------------
    @property
    def servers(self) -> list[Server]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: s.name)

    def get(self, url: str) -> Server | None:
        return next((s for s in self.servers if s.url == url.rstrip("/")), None)

    def sync(self) -> None:
        """Follow the registry: start new servers, stop removed ones, pick up drain and capabilities."""
        with self.db.session() as s:
            rows = {r.id: r for r in service.server_rows(s)}
        with self._lock:
            for gone in set(self._servers) - set(rows):
                self._servers.pop(gone).monitor.stop()
            for row in rows.values():
                srv = self._servers.get(row.id)
                if srv is None:
                    srv = self._servers[row.id] = self._make(row)
                srv.active = row.state == "active"
                if row.refreshed_at and row.refreshed_at.timestamp() > srv.refreshed:
                    srv.caps = Capabilities.from_json(row.capabilities)
                    srv.refreshed = row.refreshed_at.timestamp()

    def _make(self, row: ServerRow) -> Server:
        client = ComfyClient(row.url, timeout=30)
        monitor = ServerMonitor(row.url, self.client_id)
        srv = Server(row.id, row.name, row.url, client, monitor, caps=Capabilities.from_json(row.capabilities),
                     healthy=row.healthy)
        monitor.on_state = lambda up, error, srv=srv: self._on_socket(srv, up, error)
        monitor.start()
        return srv

    def _on_socket(self, srv: Server, up: bool, error: str | None) -> None:
        if not up and srv.healthy:
            self.mark_down(srv, error or "websocket dropped")

    # -- health and capabilities ---------------------------------------------------------------------
    def check(self, srv: Server, refresh: bool = False) -> None:
        """Health check now; probe capabilities when asked, when recovering, or when they are stale."""
        try:
            srv.client.system_stats(timeout=5)
        except ComfyError as exc:
            self.mark_down(srv, exc.message)
            srv.monitor.reset()  # a hung server may still hold the socket open
            return
        was_down = not srv.healthy
        srv.failures, srv.next_check = 0, time.monotonic() + self.health_interval_s
        if refresh or was_down or srv.caps is None or time.time() - srv.refreshed > self.refresh_interval_s:
            try:
                caps = probe(srv.client)
            except ComfyError as exc:
                self.mark_down(srv, exc.message)
                return
            srv.caps, srv.refreshed = caps, time.time()
            with self.db.session() as s:
                service.record_probe(s, srv.id, caps)  # records it healthy too
        elif was_down:
            with self.db.session() as s:
                service.record_health(s, srv.id, True, None)
        srv.healthy = True
        if was_down:
            srv.warm = frozenset()  # a restarted server has nothing loaded
            log.info("server %s is up (%s)", srv.url, srv.comfy_version)

    def mark_down(self, srv: Server, error: str) -> None:
        """Unhealthy until a check succeeds; checks back off exponentially up to a minute."""
        was_healthy = srv.healthy
        srv.healthy = False
        srv.failures += 1
        srv.next_check = time.monotonic() + min(2 ** (srv.failures - 1), 60)
        if was_healthy or srv.failures == 1:
            log.warning("server %s is down: %s", srv.url, error)
            with self.db.session() as s:
                service.record_health(s, srv.id, False, error)

    def note_dispatch(self, srv: Server, models: frozenset[ModelRef]) -> None:
        """Remember what the server will have loaded (warm-model affinity); report model loads."""
        if models and not models <= srv.warm:
            self.on_model_load(srv, models - srv.warm)
        if models:
            srv.warm = models

    # -- placement inputs ----------------------------------------------------------------------------
    def views(self, inflight: dict[str, int] | None = None) -> list[ServerView]:
        inflight = inflight or {}
        return [s.view(inflight.get(s.url, 0)) for s in self.servers]

    def object_info(self) -> dict:
        """The node definitions of a healthy server (for validating graphs before they are published)."""
        for srv in self.servers:
            if srv.healthy and srv.active:
                try:
                    return srv.client.object_info()
                except ComfyError:
                    continue
        raise Unavailable("no healthy ComfyUI server to check the graph against")

    def check_runnable(self, req: Requirements) -> None:
        """Refuse (naming what is missing) a job that no active server of the pool could ever run."""
        reason = unrunnable_reason(req, self.views())
        if reason:
            raise MissingCapability(reason)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, wait_s: float = 10.0) -> Pool:
        """Sync and check every server once (in parallel), then keep doing it in the background."""
        self.sync()
        checks = [threading.Thread(target=self.check, args=(s,)) for s in self.servers]
        for t in checks:
            t.start()
        for t in checks:
            t.join(wait_s)
        self._thread = threading.Thread(target=self._loop, name="pool", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        last_sync = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                if time.monotonic() - last_sync > self.sync_interval_s:
                    self.sync()
                    last_sync = time.monotonic()
                for srv in self.servers:
                    if time.monotonic() >= srv.next_check:
                        self.check(srv)
            except Exception:
                log.exception("pool loop")

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for srv in self.servers:
            srv.monitor.stop()
            srv.client.close()
