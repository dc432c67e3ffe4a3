"""GET /v1/burst: the burst policy, the budgets and what was spent, and the burst servers (tier 1 and up)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from sqlmodel import Session

from orchestrator.api.deps import AnyKey, CtxDep, SessionDep
from orchestrator.core.burst import Budget, BurstPolicy, windows
from orchestrator.core.server_urls import redact
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.settings import Settings

router = APIRouter(prefix="/burst", tags=["burst"])


def _window(cap: float | None, spent: float) -> dict[str, float | None]:
    return {"cap": cap, "spent": spent, "left": None if cap is None else max(cap - spent, 0.0)}


def burst_out(session: Session, settings: Settings, key_id: str | None, at: datetime | None = None) -> dict[str, Any]:
    """The burst status as GET /v1/burst (and ``medialab burst``) shows it; ``key_id``: whose daily spend to show.
    Spend counts running burst attempts at their estimate."""
    policy, budget = BurstPolicy.of(settings), Budget.of(settings)
    day, month = windows(at or datetime.now(UTC))
    spend = attempt_db.burst_spend(session, day, month)
    by_day, by_month = attempt_db.burst_by_server(session, day), attempt_db.burst_by_server(session, month)
    inflight = attempt_db.inflight_by_server(session)
    servers = [{"name": r.name, "url": redact(r.url), "kind": r.kind, "tier": r.tier, "state": r.state,
                "healthy": r.healthy, "inflight": inflight.get(r.url, 0),
                "max_inflight": r.max_inflight or settings.max_inflight, "cost_per_gpu_s": r.cost_per_gpu_s,
                "cold_start_s": r.cold_start_s, "spent_day": by_day.get(r.url, (0.0, 0))[0],
                "spent_month": by_month.get(r.url, (0.0, 0))[0], "jobs_day": by_day.get(r.url, (0.0, 0))[1]}
               for r in sorted(server_db.server_rows(session), key=lambda r: (r.tier, r.name)) if r.tier > 0]
    return {
        "policy": {"templates": sorted(policy.templates), "wait_s": policy.wait_s,
                   "template_wait_s": dict(policy.template_wait_s), "urgent_priority": policy.urgent_priority,
                   "urgent_wait_s": policy.urgent_wait_s},
        "budgets": {"day": _window(budget.day, spend.day), "month": _window(budget.month, spend.month),
                    "key_day": _window(budget.key_day, spend.key_day.get(key_id, 0.0))},
        "day_start": day, "month_start": month,
        "servers": servers,
    }


@router.get("")
def status(ctx: CtxDep, session: SessionDep, key: AnyKey) -> dict[str, Any]:
    """Which templates may burst and when, the budgets (day, month, the calling key's day: cap, spent, left;
    running burst attempts count at their estimate) and each burst server's load and spend."""
    return burst_out(session, ctx.settings, key.id)
