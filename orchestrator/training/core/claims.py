"""Training claims: how a trainer takes a job, keeps it, and what happens when it stops reporting (no I/O).

A trainer claims a QUEUED training job with a lease (an attempt owned by ``trainer:<name>``) and renews
it with every heartbeat. A trainer that shares its GPU with a pool server starts only once that server
has no prompt in flight (until then it waits, and holds the GPU so no new inference goes there). A claim
whose lease ran out is taken back: the job is queued again with backoff, or FAILED once its attempts are
used up, or CANCELLED when a cancel was requested meanwhile (the same ``retry.outcome`` as inference attempts).
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.core.retry import Outcome
from orchestrator.core.states import JobState

TRAINER_PREFIX = "trainer:"


def trainer_owner(name: str) -> str:
    """The attempt's server and owner for a trainer."""
    return f"{TRAINER_PREFIX}{name}"


def may_start(gpu_server: str | None, inflight: dict[str, int]) -> bool:
    """A trainer starts training only when the pool server on its GPU runs nothing."""
    return gpu_server is None or inflight.get(gpu_server, 0) == 0


def timed_out(started_at: datetime | None, timeout_s: float | None, now: datetime) -> bool:
    """A training with a timeout is stopped (then FAILED) once it has run that long."""
    return bool(timeout_s and started_at and (now - started_at).total_seconds() > timeout_s)


def lost_claim_reason(out: Outcome, trainer: str, spent: int) -> str:
    """The reason a job's event gives when its trainer stopped renewing its claim: ``out`` is what
    ``retry.outcome`` decided, ``spent`` the job's attempts that count, this claim included."""
    if out.state == JobState.CANCELLED:
        return f"cancelled; trainer {trainer} stopped reporting"
    if out.state == JobState.FAILED:
        return f"trainer {trainer} stopped reporting (lease expired); {spent} attempt(s) used up"
    return f"trainer {trainer} stopped reporting (lease expired); queued again"


def progress_reason(step: int | None, total: int | None, loss: float | None, eta_s: float | None) -> str:
    """One line for a progress event, as `jobs watch` shows it."""
    parts = [f"step {step}/{total}" if step is not None and total else "training"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if eta_s is not None:
        parts.append(f"eta {eta_s:.0f}s")
    return " ".join(parts)
