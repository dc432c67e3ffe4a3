"""The real engine (database, store, pool, executor) wired to fake ComfyUI servers, for fast unit tests."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import servers as server_app
from orchestrator.app import templates as template_app
from orchestrator.core import templates as tpl
from orchestrator.core.burst import Tiering
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact, Attempt, Job, JobEvent
from orchestrator.runtime import library
from orchestrator.runtime.executor import Executor
from orchestrator.runtime.pool import Pool, Server
from orchestrator.settings import PROJECT_ROOT, Settings
from storage import LocalDiskStore
from tests.conftest import png_bytes
from tests.fakes.comfy import OBJECT_INFO, FakeComfy, Script, pool_connect
from tests.fakes.provider import FakeProvider, provider_factory

FAST = {"event_timeout_s": 0.2, "retry_base_delay_s": 0.05, "max_attempts": 3, "lease_s": 30.0}
"""Settings that keep every path of the engine in milliseconds (silence noticed in 0.2 s, 50 ms backoff)."""


@dataclass
class Engine:
    db: Database
    store: LocalDiskStore
    settings: Settings
    pool: Pool
    executor: Executor
    fakes: list[FakeComfy]
    inputs: dict[str, str] = field(default_factory=dict)  # job id -> input artifact id
    remotes: list[FakeProvider] = field(default_factory=list)  # burst providers added by add_provider

    def server(self, index: int = 0) -> Server:
        srv = self.pool.get(self.fakes[index].url)
        assert srv is not None
        return srv

    def job(self, model: str = "x4.pth", image: str | None = None, **fields: Any) -> str:
        """A QUEUED upscale-esrgan v1 job on a fresh input frame (or the input artifact ``image``); ``fields`` are
        set on the row."""
        with self.db.session() as s:
            row, t = template_db.get_template(s, "upscale-esrgan", 1)
            frame = artifact_app.store_input(s, self.store, png_bytes(8, 8, (len(self.inputs) * 13 % 256, 0, 0)),
                                             "frame.png") if image is None else artifact_db.get_artifact(s, image)
            job = job_app.create_job(s, row, t, tpl.validate_params(t, {"image": frame.id, "model": model}))
            for name, value in fields.items():
                setattr(job, name, value)
            s.add(job)
            s.commit()
            self.inputs[job.id] = frame.id
            return job.id

    def attempt(self, job_id: str, index: int = 0, owner: str | None = None, lease_s: float | None = None) -> str:
        """Claim the job for server ``index`` as the dispatcher does (owner: this executor's by default)."""
        srv = self.server(index)
        with self.db.session() as s:
            attempt = attempt_db.start_attempt(s, job_db.get_job(s, job_id), srv.url, owner or self.executor.owner,
                                            self.settings.lease_s if lease_s is None else lease_s,
                                            srv.comfy_version)
            assert attempt is not None
            s.commit()
            return attempt.id

    def add_provider(self, fake: FakeProvider, name: str, tier: int = 1, rate: float = 0.5, cold_start_s: float = 0.0,
                     max_inflight: int | None = None, models: dict[str, list[str]] | None = None) -> Server:
        """Register ``fake`` as a burst server of its ``kind`` (declared: the core nodes of the upscale templates and
        ``models``, by default x4.pth), put it behind ``Pool(make_provider=...)``, sync and check it; its live
        Server."""
        declared = server_app.declared_capabilities(OBJECT_INFO, None, models or {"upscale_models": ["x4.pth"]})
        with self.db.session() as s:
            server_app.register_server(s, fake.url, name, tiering=Tiering(fake.kind, tier, rate, cold_start_s,
                                                                          max_inflight), declared=declared)
        self.remotes.append(fake)
        self.pool.make_provider = provider_factory(*self.remotes)
        self.pool.sync()
        srv = self.pool.get(fake.url)
        assert srv is not None and srv.provider is fake, f"{fake.url} is not in the pool"
        self.pool.check(srv)
        assert srv.healthy, f"{fake.url} did not check healthy"
        return srv

    def provider(self, index: int = 0) -> Server:
        srv = self.pool.get(self.remotes[index].url)
        assert srv is not None
        return srv

    def burst_attempt(self, job_id: str, index: int = 0, estimate: float = 0.0, owner: str | None = None,
                      lease_s: float | None = None) -> str:
        """Claim the job for provider ``index`` as the dispatcher's burst does (its tier, rate and estimate)."""
        srv = self.provider(index)
        with self.db.session() as s:
            attempt = attempt_db.start_attempt(s, job_db.get_job(s, job_id), srv.url, owner or self.executor.owner,
                                               self.settings.lease_s if lease_s is None else lease_s,
                                               srv.comfy_version, reason=f"burst to {srv.name}", tier=srv.tier,
                                               rate=srv.rate, estimate=estimate)
            assert attempt is not None
            s.commit()
            return attempt.id

    def get(self, job_id: str) -> Job:
        with self.db.session() as s:
            return job_db.get_job(s, job_id)

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.db.session() as s:
            return attempt_db.job_attempts(s, job_id)

    def events(self, job_id: str) -> list[JobEvent]:
        with self.db.session() as s:
            return job_db.events_after(s, job_id)

    def reasons(self, job_id: str) -> list[str]:
        return [e.reason for e in self.events(job_id)]

    def artifacts(self, job_id: str) -> list[Artifact]:
        with self.db.session() as s:
            return list(s.exec(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.origin)))

    def wait(self, job_id: str, *states: JobState, timeout: float = 5.0) -> Job:
        """The job once it is in one of ``states`` (AssertionError naming its state after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job.state} after {timeout}s, not one of {states}; "
                                     f"events: {self.reasons(job_id)}")
            time.sleep(0.005)

    def close(self) -> None:
        self.pool.close()
        for fake in self.fakes:
            fake.close()
        self.db.engine.dispose()


def start_engine(tmp_path: Path, servers: int = 1, scripts: list[Script] | None = None, **settings: Any) -> Engine:
    """A SQLite database in ``tmp_path``, the local disk store, the packaged templates, ``servers`` fake
    ComfyUI servers (sharing one script queue: the n-th prompt submitted anywhere takes the n-th script)
    registered, synced, probed and with their websockets connected, and an Executor on that pool."""
    st = Settings(home=tmp_path / "home", **{**FAST, **settings})
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    shared: deque[Script] = deque(scripts or [])
    fakes = [FakeComfy(f"http://comfy-{chr(97 + i)}.test:8188", scripts=shared) for i in range(servers)]
    with db.session() as s:
        template_app.sync_templates(s, library.scan_library(PROJECT_ROOT / "comfy_workflows"))
        for fake in fakes:
            server_app.register_server(s, fake.url, fake.url.split("//")[1].split(".")[0])
    pool = Pool(db, "test", connect=pool_connect(*fakes))
    pool.sync()
    for srv in pool.servers:
        pool.check(srv)
        assert srv.healthy and srv.caps is not None, f"{srv.url} did not probe healthy"
        assert srv.monitor.connected.wait(2), f"{srv.url}: the websocket did not connect"
    store = LocalDiskStore(tmp_path / "objects")
    executor = Executor(db, store, st, "test-owner", pool)
    return Engine(db, store, st, pool, executor, fakes)
