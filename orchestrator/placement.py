"""Which job goes next and to which server (plain functions, no I/O).

- A job goes only to a healthy, active server that has every node class and model file it needs; with
  a worker lock (``MEDIALAB_REQUIRE_LOCK``) also only to one whose ComfyUI version and the commits of the
  packs the job uses match the lock (``lock.lock_mismatch``).
- Among those: an idle server before a busy one (never an idle GPU while work waits); then the one whose
  loaded models already cover the job (warm-model affinity); then the shortest queue. A server takes at
  most ``max_inflight`` prompts (one running + one queued behind it, so uploads overlap execution).
- A server that shares its GPU with a trainer gets no inference while the trainer holds the GPU (see
  ``gpu_leases``); its jobs wait for another server or for the training to end.
- Job order: priority first; within a priority, the API key with the fewest running jobs goes first
  (fair share), then the oldest job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from orchestrator.capabilities import Capabilities, ModelRef, Requirements, missing
from orchestrator.lock import WorkerLock, lock_mismatch


@dataclass
class ServerView:
    id: str
    url: str
    healthy: bool
    active: bool  # False while draining
    caps: Capabilities | None
    inflight: int = 0
    warm: frozenset[ModelRef] = field(default_factory=frozenset)
    gpu_leased: bool = False  # a trainer on the same GPU holds it: no inference goes there meanwhile

    def lacks(self, req: Requirements, lock: WorkerLock | None = None) -> list[str]:
        """What keeps the job off this server: missing nodes/models, and differences from the lock if given."""
        lacks = missing(self.caps, req)
        if lock is not None and not lacks:
            lacks = [f"worker lock: {item}" for item in lock_mismatch(self.caps, req.node_classes, lock)]
        return lacks

    def can_run(self, req: Requirements, lock: WorkerLock | None = None) -> bool:
        return not self.lacks(req, lock)


def place(req: Requirements, servers: Sequence[ServerView], max_inflight: int = 2,
          lock: WorkerLock | None = None) -> ServerView | None:
    """The best server with a free slot for the job, or None (wait)."""
    ready = [s for s in servers
             if s.healthy and s.active and not s.gpu_leased and s.inflight < max_inflight and s.can_run(req, lock)]
    if not ready:
        return None
    return min(ready, key=lambda s: (s.inflight > 0, not (req.models and req.models <= s.warm), s.inflight, s.url))


def unrunnable_reason(req: Requirements, servers: Sequence[ServerView], lock: WorkerLock | None = None) -> str | None:
    """None when some active server could run the job (now or once healthy); else why none can."""
    active = [s for s in servers if s.active]
    if not active:
        return "no active ComfyUI server is registered"
    if any(s.can_run(req, lock) for s in active):
        return None
    return "no server can run this job: " + "; ".join(f"{s.url} lacks {', '.join(s.lacks(req, lock))}" for s in active)


@dataclass(frozen=True)
class TrainerView:
    """A trainer as the GPU lease rule sees it."""

    name: str
    gpu_server: str | None  # URL of the pool server on the same GPU
    last_seen: datetime
    waiting_since: datetime | None  # asked for work while inference still ran on its GPU
    training: bool  # holds a live training claim


def gpu_leases(trainers: Sequence[TrainerView], now: datetime, lease_s: float) -> set[str]:
    """URLs of the pool servers whose GPU a trainer holds: while it trains, and while it waits for the
    GPU to empty (from the first request for work until it stops asking for ``lease_s``). A trainer that
    went silent gives its GPU back: its claim expires and is taken back by the lease loop."""
    held = set()
    for t in trainers:
        if not t.gpu_server:
            continue
        alive = (now - t.last_seen).total_seconds() <= lease_s
        if alive and (t.training or t.waiting_since is not None):
            held.add(t.gpu_server)
    return held


@dataclass(frozen=True)
class Candidate:
    id: str
    priority: int
    key: Hashable  # the API key that submitted the job
    order: Hashable  # creation time (older first)


C = TypeVar("C", bound=Candidate)


def fair_order(candidates: Sequence[C], running_by_key: dict[Hashable, int]) -> list[C]:
    """Candidates in dispatch order: priority, then fair share across keys, then age."""
    running = Counter(running_by_key)
    left = sorted(candidates, key=lambda c: (-c.priority, c.order))
    out: list[C] = []
    while left:
        top = left[0].priority
        best = min((c for c in left if c.priority == top), key=lambda c: (running[c.key], c.order))
        out.append(best)
        running[best.key] += 1
        left.remove(best)
    return out
