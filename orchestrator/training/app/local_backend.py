"""The trainer's backend inside the orchestrator's process (the embedded default): the training use cases
called directly on this process's database and store, where ``HttpBackend`` calls them over the API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.core.errors import Conflict, Unavailable
from orchestrator.core.retry import RetryPolicy
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.settings import Settings
from orchestrator.training.app import trainings as tj
from orchestrator.training.runtime import checkpoint_files
from orchestrator.training.runtime.trainer import Claim, ClaimLost, host_info
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool


class _Executor(Protocol):
    policy: RetryPolicy


class Parts(Protocol):
    """What the backend uses of the composition root (``bootstrap.Context``)."""

    settings: Settings
    db: Database
    store: ObjectStore
    pool: Pool | None
    executor: _Executor


class LocalBackend:
    """The same operations straight on the orchestrator's database and store."""

    def __init__(self, ctx: Parts, name: str, gpu_server: str | None = None) -> None:
        self.ctx = ctx
        self.name = name
        self.gpu_server = gpu_server

    def claim(self) -> Claim | str | None:
        lease_s = self.ctx.settings.trainer_lease_s
        with self.ctx.db.session() as s:
            got = tj.claim(s, self.name, lease_s, self.gpu_server, host_info(), self.ctx.executor.policy)
        if got is None or isinstance(got, str):
            return got
        job, attempt = got
        return Claim(job.id, attempt.id, job.params, lease_s, max(min(lease_s / 6, 5.0), 0.2))

    def heartbeat(self, claim: Claim, events: list[dict[str, Any]]) -> bool:
        with self.ctx.db.session() as s:
            try:
                return bool(tj.heartbeat(s, claim.attempt_id, self.name, claim.lease_s, events)["cancel"])
            except Conflict as exc:
                raise ClaimLost(exc.message) from exc

    def download_dataset(self, claim: Claim, dest: Path) -> None:
        with self.ctx.db.session() as s:
            art = artifact_db.get_artifact(s, claim.params["dataset"])
        with self.ctx.store.open(art.key) as src, dest.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def download_checkpoint(self, name: str, dest: Path) -> None:
        path = tj.local_checkpoint(self.ctx.settings, name)
        if path is None:
            raise Unavailable(f"base checkpoint {name!r} is not in {self.ctx.settings.models_dir / 'checkpoints'}")
        if path.is_dir():  # a diffusers folder: the same checked members and unpacking as over HTTP
            members = checkpoint_files.folder_members(path, name)
            checkpoint_files.unpack_folder(checkpoint_files.IterReader(checkpoint_files.tar_stream(members)), dest)
            return
        shutil.copyfile(path, dest)

    def upload(self, claim: Claim, kind: str, path: Path, step: int | None = None) -> str:
        with self.ctx.db.session() as s, path.open("rb") as f:
            try:
                return tj.store_output(s, self.ctx.store, claim.attempt_id, self.name, kind, f, path.name, step).id
            except Conflict as exc:
                raise ClaimLost(exc.message) from exc

    def finish(self, claim: Claim, state: JobState, error: dict[str, Any] | None = None,
               lora_artifact: str | None = None) -> None:
        st = self.ctx.settings
        with self.ctx.db.session() as s:
            job = tj.finish(s, self.ctx.store, st, claim.attempt_id, self.name, state, error, lora_artifact)
            if job.state == JobState.SUCCEEDED:
                tj.distribute_result(s, self.ctx.store, st, self.ctx.pool, job.id)
