"""When a job bursts to a managed provider, where to, and what it may cost (plain functions, no I/O).

Every server of the pool has a tier: 0 is local (our own GPUs), 1 and up are burst tiers (a managed provider, a
rented ComfyUI), tried in that order. The local tier is always filled first (``placement.Placer`` places only on
tier 0). A job that waits goes to a burst tier only when all of these hold:

- its template version is on the burst allowlist (``MEDIALAB_BURST_TEMPLATES``: ``name`` or ``name@vN``);
- it has not already failed on a provider (``Job.local_only``: a provider that failed hands the job back to local);
- the estimated wait for local capacity is above its threshold (per template, else the default; jobs of
  ``urgent_priority`` and above use ``urgent_wait_s``);
- a burst server is healthy, active, has a free slot and can run it (its node classes and model files);
- its estimated cost fits every budget (day, month, the API key's day), counting what running burst attempts
  are expected to cost.

Costs are per GPU-second of the provider (``rate``); an estimate adds the provider's cold-start estimate to the
template's mean run time. Budgets and spend are in the same unit as the rates (say, US dollars).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from orchestrator.core.capabilities import Requirements
from orchestrator.core.errors import InvalidInput
from orchestrator.core.lock import WorkerLock
from orchestrator.core.placement import ServerView

if TYPE_CHECKING:
    from orchestrator.settings import Settings


SERVER_KINDS = ("comfyui", "comfy_api_v2", "runpod")  # comfyui: driven natively; the others through comfy/provider.py
MAX_TIER = 9


@dataclass(frozen=True)
class Tiering:
    """Where a server sits in the pool and what it costs (checked by ``check``)."""

    kind: str = "comfyui"
    tier: int = 0
    cost_per_gpu_s: float = 0.0
    cold_start_s: float = 0.0
    max_inflight: int | None = None

    def check(self) -> Tiering:
        """Itself, or InvalidInput naming the field that is out of range."""
        if self.kind not in SERVER_KINDS:
            raise InvalidInput(f"server kind {self.kind!r}: expected one of {', '.join(SERVER_KINDS)}")
        if not isinstance(self.tier, int) or not 0 <= self.tier <= MAX_TIER:
            raise InvalidInput(f"tier {self.tier!r}: expected 0 (local) to {MAX_TIER}")
        for name in ("cost_per_gpu_s", "cold_start_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1e6:
                raise InvalidInput(f"{name} {value!r}: expected a number from 0")
        if self.max_inflight is not None and (not isinstance(self.max_inflight, int) or not
                                              1 <= self.max_inflight <= 10_000):
            raise InvalidInput(f"max_inflight {self.max_inflight!r}: expected 1 to 10000")
        return self


@dataclass(frozen=True)
class BurstPolicy:
    """Which template versions may burst and how long their jobs may wait for local capacity first."""

    templates: frozenset[str] = frozenset()  # "name" (every version) or "name@vN"
    wait_s: float = 60.0
    template_wait_s: Mapping[str, float] = field(default_factory=dict)  # "name" or "name@vN" -> seconds
    urgent_priority: int = 50
    urgent_wait_s: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> BurstPolicy:
        """The policy of ``MEDIALAB_BURST_*``."""
        return cls(frozenset(settings.burst_templates), settings.burst_wait_s, dict(settings.burst_template_wait_s),
                   settings.burst_urgent_priority, settings.burst_urgent_wait_s)

    def allowed(self, template: str, version: int) -> bool:
        return template in self.templates or f"{template}@v{version}" in self.templates

    def threshold(self, template: str, version: int, priority: int) -> float:
        """Seconds of estimated local wait above which the job bursts."""
        wait = self.template_wait_s.get(f"{template}@v{version}", self.template_wait_s.get(template, self.wait_s))
        return min(wait, self.urgent_wait_s) if priority >= self.urgent_priority else wait


@dataclass(frozen=True)
class Budget:
    """Caps on burst spend (None: no cap): per UTC day, per UTC month, per API key per UTC day."""

    day: float | None = None
    month: float | None = None
    key_day: float | None = None

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        """The caps of ``MEDIALAB_BURST_BUDGET_*``."""
        return cls(settings.burst_budget_day, settings.burst_budget_month, settings.burst_budget_key_day)


@dataclass
class Spend:
    """What burst attempts cost (finished) or are expected to cost (running) in the current windows."""

    day: float = 0.0
    month: float = 0.0
    key_day: dict[Hashable, float] = field(default_factory=dict)

    def add(self, key: Hashable, amount: float) -> None:
        self.day += amount
        self.month += amount
        self.key_day[key] = self.key_day.get(key, 0.0) + amount


def windows(now: datetime) -> tuple[datetime, datetime]:
    """The starts of the budget windows that hold ``now``: its UTC day and its UTC month."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


def budget_block(budget: Budget, spend: Spend, key: Hashable, estimate: float) -> str | None:
    """Why spending ``estimate`` more now would break a budget, or None when it fits."""
    for name, cap, spent in (("the daily", budget.day, spend.day), ("the monthly", budget.month, spend.month),
                             ("this API key's daily", budget.key_day, spend.key_day.get(key, 0.0))):
        if cap is not None and spent + estimate > cap:
            return f"{name} burst budget ({money(cap)}) is reached (spent {money(spent)}, this job ~{money(estimate)})"
    return None


def money(amount: float) -> str:
    """An amount for people: cents, or two significant digits below a cent (a GPU-second costs fractions of one)."""
    return f"{amount:.2f}" if amount >= 0.01 or amount == 0 else f"{amount:.2g}"


def estimate_cost(rate: float, cold_start_s: float, run_s: float) -> float:
    return rate * (cold_start_s + run_s)


def actual_cost(rate: float, gpu_s: float) -> float:
    return rate * max(gpu_s, 0.0)


def seconds_between(start: datetime, end: datetime) -> float:
    """``end - start`` in seconds, whether or not the database kept the time zone (SQLite does not)."""
    def aware(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    return max((aware(end) - aware(start)).total_seconds(), 0.0)


def local_wait_s(ahead: int, slots: int, mean_s: float) -> float:
    """Expected seconds before a local server takes a job: ``ahead`` jobs (running or queued before it) drain
    ``slots`` at a time, each taking ``mean_s``. Infinite when no local server can run it at all."""
    if slots <= 0:
        return math.inf
    return ahead / slots * mean_s


@dataclass(frozen=True)
class BurstChoice:
    """The outcome for one waiting job: ``server`` to burst to (with its ``estimate``), or None with ``reason``.
    ``blocked``: it would burst but a budget or the providers' capacity keeps it local (worth an event)."""

    server: ServerView | None
    reason: str
    estimate: float = 0.0
    blocked: bool = False


def choose(req: Requirements, wait_s: float, threshold: float, providers: Sequence[ServerView], budget: Budget,
           spend: Spend, key: Hashable, run_s: float, default_inflight: int,
           lock: WorkerLock | None = None) -> BurstChoice:
    """Where a waiting job (its template allowed to burst, not ``local_only``) goes: the lowest-tier, then
    cheapest, burst server that can take it now and fits the budgets; or why it stays in the local queue."""
    if wait_s <= threshold:
        return BurstChoice(None, f"local wait ~{_secs(wait_s)} is within {_secs(threshold)}")
    capable = [p for p in providers if p.tier > 0 and p.active and p.can_run(req, lock)]
    if not capable:
        return BurstChoice(None, "no burst provider can run it", blocked=bool(providers))
    ready = [p for p in capable if p.healthy and p.inflight < (p.max_inflight or default_inflight)]
    if not ready:
        states = ", ".join(f"{p.name or p.url} {'down' if not p.healthy else 'full'}" for p in capable)
        return BurstChoice(None, f"no burst provider has a free slot ({states})", blocked=True)
    ranked = sorted(ready, key=lambda p: (p.tier, estimate_cost(p.rate, p.cold_start_s, run_s), p.url))
    best = ranked[0]
    estimate = estimate_cost(best.rate, best.cold_start_s, run_s)
    if (why := budget_block(budget, spend, key, estimate)) is not None:
        return BurstChoice(None, why, estimate, blocked=True)
    return BurstChoice(best, f"local wait ~{_secs(wait_s)} > {_secs(threshold)}; estimated cost {money(estimate)}",
                       estimate)


def _secs(s: float) -> str:
    return "unbounded (no local server can run it)" if math.isinf(s) else f"{s:.0f}s"
