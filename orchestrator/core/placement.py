"""Which job goes next and to which server (plain functions, no I/O).

- A job goes only to a healthy, active server that has every node class and model file it needs; with
  a worker lock (``MEDIALAB_REQUIRE_LOCK``) also only to one whose ComfyUI version and the commits of the
  packs the job uses match the lock (``lock.lock_mismatch``).
- Among those: an idle server before a busy one (never an idle GPU while work waits); then the one whose
  loaded models already cover the job (warm-model affinity); then the shortest queue (``place``, one job).
  A dispatch round places its jobs together (``Placer``): a server holding a job's models takes it ahead
  of older jobs of the same priority, within a bound (``max_bypass``), so far fewer models are loaded.
  A server takes at most ``max_inflight`` prompts (one running + one queued behind it, so uploads
  overlap execution).
- A server that shares its GPU with a trainer gets no inference while the trainer holds the GPU (see
  ``gpu_leases``); its jobs wait for another server or for the training to end.
- Job order: priority first; within a priority, the API key with the fewest running jobs goes first
  (fair share), then the oldest job.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from orchestrator.core.capabilities import Capabilities, ModelRef, Requirements, missing
from orchestrator.core.lock import WorkerLock, lock_mismatch


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
    name: str = ""
    tier: int = 0  # 0: local (placed here); 1 and up: burst tiers (core/burst.py)
    rate: float = 0.0  # cost per GPU-second
    cold_start_s: float = 0.0  # seconds a burst job is expected to wait for the provider's worker to start
    max_inflight: int | None = None  # jobs at once on a burst server (None: MEDIALAB_MAX_INFLIGHT)

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


def _warm(s: ServerView, req: Requirements) -> bool:
    return bool(req.models) and req.models <= s.warm


PLACEMENT_MODES = ("affinity", "round_robin")


class Placer:
    """Places a dispatch round's jobs (in fair order) on servers; the state it keeps between rounds is
    the number of times each waiting job was passed over, and the round-robin cursor (no I/O).

    ``affinity`` (the default): an idle server takes a job whose models it holds, else the oldest job it
    can run, loading its model (never an idle GPU while work waits; it leaves alone, while others are
    waiting, jobs that a busy server holding their models could queue); a busy server's free slot takes
    only jobs whose models it holds, even ahead of older jobs of the same priority; a job that
    ``max_bypass`` later jobs of its priority have started ahead of takes the next free slot anywhere
    (so nothing waits for ever).
    A job never overtakes an older job of a higher priority that could use the same server.
    ``round_robin``: oldest job first, to the next server in turn with a free slot (idle ones first),
    blind to loaded models (the baseline the scheduling benchmark compares with).
    """

    def __init__(self, mode: str = "affinity", max_inflight: int = 2, max_bypass: int = 100,
                 lock: WorkerLock | None = None) -> None:
        if mode not in PLACEMENT_MODES:
            raise ValueError(f"placement mode {mode!r}: expected one of {', '.join(PLACEMENT_MODES)}")
        self.mode, self.max_inflight, self.max_bypass, self.lock = mode, max_inflight, max_bypass, lock
        self.passed: dict[Hashable, int] = {}  # job -> later jobs of its priority placed before it
        self.cursor = 0
        self._can: dict[tuple[str, Requirements], bool] = {}  # (server, requirements) -> can run, for one plan

    def _ready(self, s: ServerView, req: Requirements) -> bool:
        if not (s.inflight < self.max_inflight and s.healthy and s.active and not s.gpu_leased):
            return False
        if (key := (s.url, req)) not in self._can:  # a round asks it of each server for many jobs alike
            self._can[key] = s.can_run(req, self.lock)
        return self._can[key]

    def plan(self, jobs: Sequence[tuple[Hashable, int, Requirements]],
             servers: Sequence[ServerView]) -> list[tuple[Hashable, ServerView]]:
        """(job, server) for the jobs placed now, in the given order. ``jobs`` are (id, priority,
        requirements) in dispatch order; the views' ``inflight`` and ``warm`` are updated as jobs are placed."""
        placed: dict[int, ServerView] = {}
        free = [s for s in servers if s.inflight < self.max_inflight]  # only these can take a job this round
        self._can = {}  # capabilities may have changed since the last round

        def take(i: int, s: ServerView) -> None:
            req = jobs[i][2]
            s.inflight += 1
            s.warm = req.models or s.warm
            placed[i] = s

        if self.mode == "round_robin":
            ring = sorted(servers, key=lambda s: s.url)
            for i, (_jid, _prio, req) in enumerate(jobs):
                turn = [ring[(self.cursor + k) % len(ring)] for k in range(len(ring))]
                ready = [s for s in turn if self._ready(s, req)]
                if ready:
                    chosen = next((s for s in ready if s.inflight == 0), ready[0])
                    take(i, chosen)
                    self.cursor = (ring.index(chosen) + 1) % len(ring)
            return [(jobs[i][0], placed[i]) for i in sorted(placed)]

        top = jobs[0][1] if jobs else 0

        def overtakes(i: int, s: ServerView) -> bool:  # an older, higher-priority job could use s
            prio = jobs[i][1]
            return prio < top and any(jobs[k][1] > prio and k not in placed and self._ready(s, jobs[k][2])
                                      for k in range(i))

        for i, (jid, _prio, req) in enumerate(jobs):  # 1. due: no model to be warm for, or passed over enough
            if not req.models or self.passed.get(jid, 0) >= self.max_bypass:
                ready = [s for s in free if self._ready(s, req) and not overtakes(i, s)]
                if ready:
                    take(i, min(ready, key=lambda s: (s.inflight > 0, not _warm(s, req), s.inflight, s.url)))
        for i, (_jid, _prio, req) in enumerate(jobs):  # 2. an idle server that holds the job's models
            if i not in placed:
                warm = [s for s in free if s.inflight == 0 and _warm(s, req) and self._ready(s, req)
                        and not overtakes(i, s)]
                if warm:
                    take(i, min(warm, key=lambda s: s.url))
        for first in (True, False):  # 3. idle servers: the oldest jobs no busy server holding their models
            for i, (_jid, _prio, req) in enumerate(jobs):  # could queue, then the oldest of the rest
                if i in placed or first and any(_warm(s, req) and self._ready(s, req) for s in free):
                    continue
                idle = [s for s in free if s.inflight == 0 and self._ready(s, req) and not overtakes(i, s)]
                if idle:
                    take(i, min(idle, key=lambda s: s.url))
        for i, (_jid, _prio, req) in enumerate(jobs):  # 4. a busy server's free slot, if it holds the models
            if i not in placed:
                warm = [s for s in free if _warm(s, req) and self._ready(s, req) and not overtakes(i, s)]
                if warm:
                    take(i, min(warm, key=lambda s: (s.inflight, s.url)))
        passed: dict[Hashable, int] = {}
        later: Counter[int] = Counter()  # placed jobs after this position, by priority
        for i in range(len(jobs) - 1, -1, -1):
            jid, prio, _req = jobs[i]
            if i in placed:
                later[prio] += 1
            else:
                passed[jid] = self.passed.get(jid, 0) + later[prio]
        self.passed = passed
        return [(jobs[i][0], placed[i]) for i in sorted(placed)]


def unrunnable_reason(req: Requirements, servers: Sequence[ServerView], lock: WorkerLock | None = None) -> str | None:
    """None when some active server could run the job (now or once healthy); else why none can."""
    active = [s for s in servers if s.active]
    if not active:
        return "no active ComfyUI server is registered"
    if any(s.can_run(req, lock) for s in active):
        return None
    return "no server can run this job: " + "; ".join(f"{s.url} lacks {', '.join(s.lacks(req, lock))}" for s in active)


def impossible_reason(req: Requirements, servers: Sequence[ServerView], lock: WorkerLock | None = None) -> str | None:
    """Why a queued job can never run on the pool as it is, or None while it may still run (then it waits).

    Stricter than the submit-time ``unrunnable_reason``, because failing a queued job cannot be undone: a
    draining server still counts (it may be activated again), and nothing is decided while the pool is
    empty or a server's capabilities are not known yet (it may be the one that has what the job needs)."""
    if not servers or any(s.caps is None for s in servers):
        return None
    if any(s.can_run(req, lock) for s in servers):
        return None
    return "no server can run this job: " + "; ".join(f"{s.url} lacks {', '.join(s.lacks(req, lock))}"
                                                      for s in servers)


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
    levels: dict[int, dict[Hashable, deque[C]]] = {}  # priority -> key -> its candidates, oldest first
    for c in sorted(candidates, key=lambda c: (-c.priority, c.order)):
        levels.setdefault(c.priority, {}).setdefault(c.key, deque()).append(c)
    out: list[C] = []
    for priority in sorted(levels, reverse=True):  # each step: the key with the fewest running, then the oldest
        queues = list(levels[priority].values())
        heap = [(running[q[0].key], q[0].order, i) for i, q in enumerate(queues)]
        heapq.heapify(heap)
        while heap:
            _, _, i = heapq.heappop(heap)
            q = queues[i]
            best = q.popleft()
            out.append(best)
            running[best.key] += 1
            if q:
                heapq.heappush(heap, (running[best.key], q[0].order, i))
    return out
