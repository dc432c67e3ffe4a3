"""The pool of ComfyUI servers: registry sync, health checks with backoff, capabilities, websockets.

The database holds the registry (servers from the config file, the API or the CLI) and each server's last
known health and capabilities, so every orchestrator process and the CLI see the same pool. This module
keeps the live side: one ComfyClient and one ServerMonitor (websocket, with a client id of its own, so one
ComfyUI registered under two URLs gets two sockets that do not steal each other's events) per server, and
a background thread that syncs with the registry, checks health (backing off on failures), refreshes
capabilities and removes the prompts of abandoned attempts from a server once it answers again. A
registry row it cannot use (a malformed URL) is reported once, recorded unhealthy with the reason, and
skipped: it never stops the loop for the other servers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.comfy.client import ComfyClient, ComfyError
from orchestrator.comfy.monitor import ServerMonitor
from orchestrator.comfy.provider import Provider, RemoteHealth
from orchestrator.core.burst import SERVER_KINDS
from orchestrator.core.capabilities import Capabilities, ModelRef, Requirements
from orchestrator.core.errors import Unavailable
from orchestrator.core.placement import ServerView, unrunnable_reason
from orchestrator.core.server_urls import parse_server_url, redact
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import ServerRow

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


def connect_server(url: str, client_id: str, token: str | None = None) -> tuple[ComfyClient, ServerMonitor]:
    """The client and (not yet started) websocket monitor of one server: the default of ``Pool(connect=...)``,
    which tests replace to put a fake ComfyUI behind the same client and monitor code. ``token``: a bearer
    token the server (its reverse proxy) wants."""
    return ComfyClient(url, timeout=30, token=token), ServerMonitor(url, client_id, token=token)


def connect_provider(kind: str, url: str, token: str | None = None) -> Provider:
    """The adapter of a provider of ``kind`` (``burst.SERVER_KINDS`` but comfyui)."""
    if kind == "comfy_api_v2":
        from orchestrator.comfy.api_v2 import ApiV2Provider

        return ApiV2Provider(url, token=token)
    if kind == "runpod":
        from orchestrator.comfy.runpod import RunPodProvider

        return RunPodProvider(url, token=token)
    raise ValueError(f"server kind {kind!r}: expected one of {', '.join(SERVER_KINDS)}")


@dataclass
class Server:
    """The live side of one registered server."""

    id: str
    name: str
    url: str
    client: ComfyClient | None  # a ComfyUI driven natively (kind comfyui); None for a provider
    monitor: ServerMonitor | None
    provider: Provider | None = None  # a provider's adapter (kind comfy_api_v2, runpod)
    kind: str = "comfyui"
    tier: int = 0
    rate: float = 0.0
    cold_start_s: float = 0.0
    max_inflight: int | None = None
    active: bool = True
    healthy: bool = False
    caps: Capabilities | None = None
    warm: frozenset[ModelRef] = frozenset()
    failures: int = 0
    next_check: float = 0.0
    refreshed: float = 0.0
    cleanup_due: bool = True  # abandoned prompts may wait on it (always looked up once after a start)

    @property
    def comfy_version(self) -> str | None:
        return self.caps.comfy_version if self.caps else None

    def view(self, inflight: int = 0) -> ServerView:
        return ServerView(self.id, self.url, self.healthy, self.active, self.caps, inflight, self.warm,
                          name=self.name, tier=self.tier, rate=self.rate, cold_start_s=self.cold_start_s,
                          max_inflight=self.max_inflight)

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        for part in (self.client, self.provider):
            if part is not None:
                part.close()


class Pool:
    def __init__(self, db: Database, client_id: str, health_interval_s: float = 5.0,
                 refresh_interval_s: float = 300.0, sync_interval_s: float = 2.0,
                 connect: Callable[..., tuple[ComfyClient, ServerMonitor]] = connect_server,
                 tokens: dict[str, str] | None = None,
                 make_provider: Callable[[str, str, str | None], Provider] = connect_provider) -> None:
        """``tokens``: bearer tokens by server name (``MEDIALAB_PROVIDER_TOKENS``); ``make_provider``: makes a
        provider's adapter (tests put a stand-in's behind it)."""
        self.db = db
        self.connect = connect
        self.tokens = tokens or {}
        self.make_provider = make_provider
        self.client_id = client_id
        self.health_interval_s = health_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.sync_interval_s = sync_interval_s
        self._servers: dict[str, Server] = {}
        self._unusable: dict[str, str] = {}  # registry rows that cannot be followed: id -> why (reported once)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_model_load = lambda server, models: None  # metrics hook

    # -- registry ---------------------------------------------------------------------------------
    @property
    def servers(self) -> list[Server]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: s.name)

    def unusable(self) -> set[str]:
        """Ids of the registry rows the pool cannot follow (malformed URL): never part of the pool."""
        with self._lock:
            return set(self._unusable)

    def get(self, url: str) -> Server | None:
        return next((s for s in self.servers if s.url == url.rstrip("/")), None)

    def sync(self) -> None:
        """Follow the registry: start new servers, stop removed ones, pick up drain and capabilities."""
        with self.db.session() as s:
            rows = {r.id: r for r in server_db.server_rows(s)}
        unusable: list[tuple[ServerRow, str]] = []
        with self._lock:
            for gone in set(self._servers) - set(rows):
                self._servers.pop(gone).stop()
            for gone in set(self._unusable) - set(rows):
                del self._unusable[gone]
            for row in rows.values():
                if row.id in self._unusable:
                    continue
                try:
                    srv = self._servers.get(row.id)
                    if srv is None:
                        srv = self._servers[row.id] = self._make(row)
                    srv.active = row.state == "active"
                    srv.tier, srv.rate, srv.cold_start_s = row.tier, row.cost_per_gpu_s, row.cold_start_s
                    srv.max_inflight = row.max_inflight
                    if row.refreshed_at and row.refreshed_at.timestamp() > srv.refreshed:
                        srv.caps = Capabilities.from_json(row.capabilities)
                        srv.refreshed = row.refreshed_at.timestamp()
                except Exception as exc:  # one bad row must not keep the pool from the others
                    self._unusable[row.id] = why = f"unusable registry entry: {type(exc).__name__}: {exc}"[:500]
                    stale = self._servers.pop(row.id, None)
                    if stale is not None:
                        stale.stop()
                    unusable.append((row, why))
        for row, why in unusable:
            log.error("server %s (%r): %s; skipped until it is removed", row.name[:100], redact(row.url)[:100], why)
            with self.db.session() as s:
                server_db.record_health(s, row.id, False, why)
                s.commit()

    def _make(self, row: ServerRow) -> Server:
        parse_server_url(row.url)  # the registration rule (InvalidInput naming it): a row written around it
        token = self.tokens.get(row.name)
        parts = dict(kind=row.kind, tier=row.tier, rate=row.cost_per_gpu_s, cold_start_s=row.cold_start_s,
                     max_inflight=row.max_inflight, caps=Capabilities.from_json(row.capabilities), healthy=row.healthy)
        if row.kind != "comfyui":
            return Server(row.id, row.name, row.url, None, None, provider=self.make_provider(row.kind, row.url, token),
                          cleanup_due=False, **parts)
        # one client id per socket; the token only when there is one (the connect seam of tests takes two)
        client, monitor = self.connect(row.url, f"{self.client_id}-{row.id}", *([token] if token else []))
        srv = Server(row.id, row.name, row.url, client, monitor, **parts)
        monitor.on_state = lambda up, error, srv=srv: self._on_socket(srv, up, error)
        monitor.start()
        return srv

    def _on_socket(self, srv: Server, up: bool, error: str | None) -> None:
        if not up and srv.healthy:
            self.mark_down(srv, error or "websocket dropped")

    # -- health and capabilities ---------------------------------------------------------------------
    def check(self, srv: Server, refresh: bool = False) -> None:
        """Health check now; probe capabilities when asked, when recovering, or when they are stale. A provider
        is asked its health only: its capabilities are the ones declared when it was registered."""
        if srv.provider is not None:
            return self._check_provider(srv)
        assert srv.client is not None and srv.monitor is not None
        try:
            srv.client.system_stats(timeout=5)
        except ComfyError as exc:
            self.mark_down(srv, exc.message)
            srv.monitor.reset()  # a hung server may still hold the socket open
            return
        was_down = not srv.healthy
        srv.failures, srv.next_check = 0, time.monotonic() + self.health_interval_s
        if srv.cleanup_due or was_down:  # first of all: an abandoned prompt must not run on
            self.clean_abandoned(srv)
        if refresh or was_down or srv.caps is None or time.time() - srv.refreshed > self.refresh_interval_s:
            try:
                caps = probe(srv.client)
            except ComfyError as exc:
                self.mark_down(srv, exc.message)
                return
            srv.caps, srv.refreshed = caps, time.time()
            with self.db.session() as s:
                server_db.record_probe(s, srv.id, caps)  # records it healthy too
                s.commit()
        else:  # every successful check: its time is the server's last_seen (what `servers list` shows)
            with self.db.session() as s:
                server_db.record_health(s, srv.id, True, None)
                s.commit()
        srv.healthy = True
        if was_down:
            srv.warm = frozenset()  # a restarted server has nothing loaded
            log.info("server %s is up (%s)", redact(srv.url), srv.comfy_version)

    def _check_provider(self, srv: Server) -> None:
        assert srv.provider is not None
        try:
            health = srv.provider.health()
        except ComfyError as exc:
            health = RemoteHealth(False, exc.message)
        if not health.ok:
            return self.mark_down(srv, health.detail or "unhealthy")
        was_down = not srv.healthy
        srv.failures, srv.next_check, srv.healthy = 0, time.monotonic() + self.health_interval_s, True
        with self.db.session() as s:
            server_db.record_health(s, srv.id, True, None)
            s.commit()
        if was_down:
            log.info("provider %s is up (%s)", redact(srv.url), health.detail or srv.kind)

    def clean_abandoned(self, srv: Server) -> int:
        """Remove from the server's queue, or interrupt by its prompt_id (never a bare interrupt), each prompt
        of an attempt that ended while the server did not answer; the flag is cleared once the server's queue
        no longer holds it (an interrupt takes effect between steps: until then it is asked again at every
        check). Returns how many were cleared. The flags live in the database, so whichever process checks
        the server next (another replica, this one restarted) does it."""
        with self.db.session() as s:
            attempts = attempt_db.abandoned_attempts(s, srv.url)
        if not attempts or srv.client is None:
            srv.cleanup_due = False
            return 0
        ids = [a.id for a in attempts]
        try:
            srv.client.delete_queued(*ids)
            for pid in ids:
                srv.client.interrupt(pid)
            queue = srv.client.queue(timeout=5)
        except ComfyError as exc:
            log.warning("server %s: abandoned prompts not removed yet: %s", redact(srv.url), exc.message)
            srv.cleanup_due = True
            return 0
        held = {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])}
        gone = [pid for pid in ids if pid not in held]
        with self.db.session() as s:
            attempt_db.clear_abandoned(s, gone)
            s.commit()
        srv.cleanup_due = len(gone) < len(ids)
        log.info("server %s: removed %d abandoned prompt(s)%s", redact(srv.url), len(ids),
                 f", {len(ids) - len(gone)} still being interrupted" if srv.cleanup_due else "")
        return len(gone)

    def note_abandoned(self, srv: Server) -> None:
        """An attempt on this server was just left abandoned: clean up at its next successful check."""
        srv.cleanup_due = True
        srv.next_check = min(srv.next_check, time.monotonic() + self.health_interval_s)

    def mark_down(self, srv: Server, error: str) -> None:
        """Unhealthy until a check succeeds; checks back off exponentially up to a minute (up to the health
        interval while abandoned prompts wait on it: they are removed as soon as it answers)."""
        was_healthy = srv.healthy
        srv.healthy = False
        srv.failures += 1
        cap = self.health_interval_s if srv.cleanup_due else 60
        srv.next_check = time.monotonic() + min(2 ** (srv.failures - 1), cap)
        if was_healthy or srv.failures == 1:
            log.warning("server %s is down: %s", redact(srv.url), redact(error))
            with self.db.session() as s:
                server_db.record_health(s, srv.id, False, error)
                s.commit()

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
            if srv.healthy and srv.active and srv.client is not None:
                try:
                    return srv.client.object_info()
                except ComfyError:
                    continue
        raise Unavailable("no healthy ComfyUI server to check the graph against")

    def check_runnable(self, req: Requirements, burst: bool = False) -> None:
        """Refuse (naming what is missing) a job that no active server of the pool could ever run (``burst``: its
        template may burst, so the burst tiers count too)."""
        reason = unrunnable_reason(req, [v for v in self.views() if burst or v.tier == 0])
        if reason:
            raise MissingCapability(reason)

    def absent_models(self, req: Requirements) -> set[tuple[str, str]]:
        """The (folder, file) models of the job that no active server of the pool has, as far as is known."""
        caps = [v.caps for v in self.views() if v.active and v.tier == 0 and v.caps is not None]
        return {(folder, name) for folder, name in req.models
                if not any(name in c.models.get(folder, ()) for c in caps)}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, wait_s: float = 10.0) -> Pool:
        """Sync and check every server once (in parallel), then keep doing it in the background."""
        self.sync()
        checks = [threading.Thread(target=self._check_isolated, args=(s,)) for s in self.servers]
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
                        self._check_isolated(srv)
            except Exception:
                log.exception("pool loop")

    def _check_isolated(self, srv: Server) -> None:
        """A check whose unexpected error marks that server down (logged once) and leaves the others alone."""
        try:
            self.check(srv)
        except Exception as exc:
            if srv.healthy or srv.failures == 0:
                log.exception("health check of %s", redact(srv.url))
            self.mark_down(srv, f"health check failed: {type(exc).__name__}: {exc}"[:500])

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for srv in self.servers:
            srv.stop()
