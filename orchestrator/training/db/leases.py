"""The GPUs that trainers hold: read from the trainer rows and their running claims (never commits)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from orchestrator.core.placement import TrainerView, gpu_leases
from orchestrator.core.states import JobState
from orchestrator.db.tables import Attempt, Trainer, now
from orchestrator.training.core import claims


def leased_gpus(session: Session, lease_s: float) -> set[str]:
    """URLs of the pool servers a trainer holds the GPU of (no inference goes there meanwhile)."""
    trainers = list(session.exec(select(Trainer).where(col(Trainer.gpu_server).is_not(None))))
    if not trainers:
        return set()
    training = {a.server for a in session.exec(select(Attempt).where(
        Attempt.state == JobState.RUNNING, col(Attempt.server).startswith(claims.TRAINER_PREFIX)))}
    views = [TrainerView(t.name, t.gpu_server, t.last_seen, t.waiting_since,
                         claims.trainer_owner(t.name) in training) for t in trainers]
    return gpu_leases(views, now(), lease_s)
