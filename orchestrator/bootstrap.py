"""Wires settings into the running parts: database, object store, pool (or a local worker), dispatcher.

The API server and the CLI both build one of these, so they share one code path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import tomllib

from sqlmodel import Session, select

from orchestrator.app import pipeline_runs as run_app
from orchestrator.app import pipelines as pipeline_app
from orchestrator.app import servers as server_app
from orchestrator.app import templates as template_app
from orchestrator.comfy.worker import LocalWorker, has_gpu
from orchestrator.core.burst import Tiering
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import Conflict, InvalidInput
from orchestrator.core.server_urls import redact
from orchestrator.db import servers as server_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact, ServerRow
from orchestrator.runtime import library, media, pipeline_library
from orchestrator.runtime.dispatcher import Dispatcher
from orchestrator.runtime.executor import Executor
from orchestrator.runtime.metrics import Metrics
from orchestrator.runtime.pool import Pool
from orchestrator.settings import Settings
from orchestrator.training.app import trainings
from orchestrator.training.app.local_backend import LocalBackend
from orchestrator.training.runtime.trainer import Trainer
from storage import LocalDiskStore, MinioStore, ObjectStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Configured:
    """A server named by MEDIALAB_COMFY_SERVERS or the servers file."""

    name: str | None
    url: str
    tiering: Tiering = Tiering()
    declared: Capabilities | None = None


TIERING_KEYS = ("kind", "tier", "cost_per_gpu_s", "cold_start_s", "max_inflight")


def configured_servers(settings: Settings) -> list[Configured]:
    """The servers named by MEDIALAB_COMFY_SERVERS and the servers file (``[[server]]`` tables: name, url, and for
    tiers and providers kind, tier, cost_per_gpu_s, cold_start_s, max_inflight, object_info (a file, relative to
    the servers file), node_classes, models (folder = [files]))."""
    found = [Configured(None, url) for url in settings.comfy_servers]
    if settings.servers_file:
        where = f"servers file {settings.servers_file}"
        try:
            data = tomllib.loads(settings.servers_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
        for i, entry in enumerate(data.get("server", [])):
            if not isinstance(entry, dict) or "url" not in entry:
                raise InvalidInput(f"{where}: [[server]] #{i + 1} has no url")
            if not isinstance(entry["url"], str) or not isinstance(entry.get("name", ""), str):
                raise InvalidInput(f"{where}: [[server]] #{i + 1}: url and name are strings")
            try:
                tiering = Tiering(**{k: entry[k] for k in TIERING_KEYS if k in entry}).check()
                declared = None
                if any(k in entry for k in ("object_info", "node_classes", "models")):
                    object_info = None
                    if "object_info" in entry:
                        path = settings.servers_file.parent / str(entry["object_info"])
                        try:
                            object_info = json.loads(path.read_text())
                        except (OSError, ValueError) as exc:
                            raise InvalidInput(f"object_info {path}: {exc}") from exc
                    declared = server_app.declared_capabilities(object_info, entry.get("node_classes"),
                                                                entry.get("models"))
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: [[server]] #{i + 1}: {exc.message}") from exc
            found.append(Configured(entry.get("name"), entry["url"], tiering, declared))
    return found


def register_configured(session: Session, settings: Settings) -> None:
    """Register the configured servers: a bad URL or name stops the start, naming the entry (nothing of it is
    stored); an entry that is a registered server under another name is skipped with a warning. A server the
    file registered before takes the tier, cost and declared capabilities the file says now."""
    for c in configured_servers(settings):
        try:
            row = server_app.register_server(session, c.url, c.name, source="config", settings=settings,
                                             tiering=c.tiering, declared=c.declared)
        except Conflict as exc:
            log.warning("configured server %s skipped: %s", redact(c.url), exc.message)
            continue
        except InvalidInput as exc:
            where = f"servers file {settings.servers_file}" if c.name is not None else "MEDIALAB_COMFY_SERVERS"
            raise InvalidInput(f"{where}: {exc.message}", **exc.extra) from exc
        changes = {k: v for k, v in vars(c.tiering).items() if k != "kind" and getattr(row, k) != v}
        declared = c.declared if c.declared and c.declared.to_json() != row.capabilities else None
        if row.source == "config" and (changes or declared):
            server_app.update_server(session, row.id, changes, declared)


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage == "local":
        return LocalDiskStore(settings.objects)
    if settings.storage != "s3":
        raise InvalidInput(f"MEDIALAB_STORAGE={settings.storage!r}: expected local or s3")
    missing = [n for n in ("s3_endpoint", "s3_access_key", "s3_secret_key") if not getattr(settings, n)]
    if missing:
        raise InvalidInput("MEDIALAB_STORAGE=s3 needs " + ", ".join(f"MEDIALAB_{n.upper()}" for n in missing))
    spool = settings.home / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    return MinioStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
                      secure=settings.s3_secure, region=settings.s3_region, spool_dir=spool)


def process_owner(replica_id: str | None) -> str:
    """This process lifetime's identity (Attempt.owner, the websocket client ids): the replica id or host
    name, the pid and a random suffix. Host and pid repeat in containers (pid 1, same host name) and a
    replica id repeats by design, so without the suffix a process restarted within the lease would renew,
    and never adopt, the leases of the attempts its dead predecessor was following."""
    return f"{replica_id or socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def worker_env(settings: Settings) -> dict[str, str]:
    """The local worker shares the orchestrator's object store, so its node pack can take the direct path,
    and its URL rule (the node pack fetches only what ``url_*`` allow)."""
    env = {"MEDIALAB_URL_ALLOWLIST": ",".join(settings.url_allowlist),
           "MEDIALAB_URL_PRIVATE_OK": "true" if settings.url_private_ok else "",
           "MEDIALAB_URL_MAX_BYTES": str(settings.url_max_bytes), "MEDIALAB_URL_TIMEOUT_S": str(settings.url_timeout_s)}
    if settings.storage != "s3":
        return env
    return env | {"MEDIALAB_S3_ENDPOINT": settings.s3_endpoint or "",
                  "MEDIALAB_S3_ACCESS_KEY": settings.s3_access_key or "",
                  "MEDIALAB_S3_SECRET_KEY": settings.s3_secret_key or "", "MEDIALAB_S3_BUCKET": settings.s3_bucket,
                  "MEDIALAB_S3_SECURE": "true" if settings.s3_secure else ""}


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        if note := media.pixel_cap_warning(settings):  # a limit that is not the one applied: said at start
            log.warning(note)
        self.owner = process_owner(settings.replica_id)
        self.db = Database(settings.database)
        self.store = make_store(settings)
        with self.db.session() as s:
            template_app.sync_templates(s, library.scan_library(settings.templates))
            pipeline_app.sync_pipelines(s, pipeline_library.scan_pipelines(settings.pipelines))
            register_configured(s, settings)
        self.executor = Executor(self.db, self.store, settings, self.owner)
        # a step's job ended: its pipeline run advances at once (the lease-loop sweep covers the rest)
        self.executor.on_final = lambda job_id: run_app.job_finished(self.db, job_id, self.pool, self.settings)
        self.worker: LocalWorker | None = None
        self.pool: Pool | None = None
        self.metrics: Metrics | None = None
        self.dispatcher: Dispatcher | None = None

    def start_pool(self) -> Pool:
        """The registered servers, or, when there are none, a local ComfyUI worker started now."""
        if self.pool is None:
            with self.db.session() as s:
                for stale in s.exec(select(ServerRow).where(ServerRow.source == "local")):
                    s.delete(stale)  # a local worker of an earlier run: gone with its process
                s.commit()
                if not server_db.server_rows(s):
                    st = self.settings
                    self.worker = LocalWorker(st.comfy_runtime, st.models_dir, st.home / "worker",
                                              port=st.worker_port, device=st.worker_device,
                                              start_timeout_s=st.worker_start_timeout_s, env=worker_env(st))
                    log.info("no ComfyUI server registered: starting a local worker on %s", self.worker.url)
                    self.worker.start()
                    server_app.register_server(s, self.worker.url, "local", source="local")
            self.pool = Pool(self.db, f"medialab-{self.owner}", health_interval_s=self.settings.health_interval_s,
                             refresh_interval_s=self.settings.refresh_interval_s,
                             tokens=self.settings.provider_tokens).start()
            self.executor.pool = self.executor.staging.pool = self.pool
            self.metrics = Metrics(self.db, self.pool, self.settings)
        return self.pool

    def input_stored(self, art: Artifact) -> None:
        """A new input artifact: its bytes start towards the servers likely to run its job (``runtime/staging``)."""
        self.executor.staging.ahead(art)

    def start_dispatcher(self, dispatch: bool = True, recover: bool = True) -> Dispatcher:
        policy = self.executor.policy
        self.dispatcher = Dispatcher(self.db, self.start_pool(), self.executor, self.settings, self.metrics,
                                     lease_hooks=[lambda s: trainings.expire_claims(s, policy),
                                                  lambda s: run_app.sweep(s, self.pool, self.settings)])
        return self.dispatcher.start(dispatch, recover)

    def close(self) -> None:
        self.executor.stop()  # attempts still followed are left to the next process, not failed by the shutdown
        if self.dispatcher:
            self.dispatcher.stop()
        self.executor.staging.close()
        if self.pool:
            self.pool.close()
        if self.worker:
            self.worker.stop()
            with self.db.session() as s:
                for row in s.exec(select(ServerRow).where(ServerRow.source == "local")):
                    s.delete(row)
                s.commit()
        self.db.engine.dispose()


def start_local_trainer(ctx: Context) -> Trainer | None:
    """The embedded trainer of ``serve``: one thread on this process's database and store, when
    MEDIALAB_LOCAL_TRAINER is true and MEDIALAB_SD_SCRIPTS_DIR names sd-scripts; None otherwise."""
    st = ctx.settings
    if not st.local_trainer:
        return None
    if not st.sd_scripts_dir:
        log.info("no local trainer: MEDIALAB_SD_SCRIPTS_DIR is not set (training jobs wait for a `medialab "
                 "trainer`)")
        return None
    cpu = st.worker_device == "cpu" or (st.worker_device == "auto" and not has_gpu())
    gpu_server = "local" if ctx.worker is not None else None  # the local worker is on the same GPU
    trainer = Trainer(LocalBackend(ctx, f"local-{ctx.owner}", gpu_server), workdir=st.home / "trainer",
                      sd_scripts_dir=st.sd_scripts_dir, python=st.trainer_python,
                      tokenizer_cache_dir=st.tokenizer_cache_dir, models_dir=st.models_dir, cpu=cpu,
                      accelerate=st.trainer_accelerate, poll_s=1.0)
    return trainer.start()
