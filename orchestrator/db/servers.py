"""Server rows: reads and recorded health (never commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from orchestrator.core import server_urls
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import NotFound
from orchestrator.core.placement import ServerView
from orchestrator.db.ids import by_prefix
from orchestrator.db.tables import (
    ServerRow,
    now,
)

if TYPE_CHECKING:
    pass


def recorded_views(rows: Iterable[ServerRow]) -> list[ServerView]:
    """The registry as placement sees it, from the health and capabilities recorded in the database."""
    return [ServerView(r.id, r.url, r.healthy, r.state == "active", Capabilities.from_json(r.capabilities),
                       name=r.name, tier=r.tier, rate=r.cost_per_gpu_s, cold_start_s=r.cold_start_s,
                       max_inflight=r.max_inflight) for r in rows]


def server_rows(session: Session) -> list[ServerRow]:
    return list(session.exec(select(ServerRow).order_by(ServerRow.name)))


def get_server(session: Session, ref: str) -> ServerRow:
    """A server by id, name or URL (in any spelling of its canonical form), or a unique prefix of its id."""
    url = server_urls.canonical(ref) or ref.rstrip("/")
    row = session.exec(select(ServerRow).where(or_(ServerRow.id == ref, ServerRow.name == ref,
                                                   ServerRow.url == url))).first()
    if row is None:
        row = by_prefix(session, ServerRow, ref, "server")
    if row is None:
        raise NotFound(f"unknown server {server_urls.redact(ref[:200])!r}")
    return row


def record_probe(session: Session, server_id: str, caps: Capabilities) -> None:
    """The capabilities a probe just read, and the server healthy; the caller commits."""
    session.execute(update(ServerRow).where(col(ServerRow.id) == server_id).values(
        capabilities=caps.to_json(), refreshed_at=now(), healthy=True, last_seen=now(), last_error=None))


def record_health(session: Session, server_id: str, healthy: bool, error: str | None) -> None:
    """The outcome of a health check; the caller commits."""
    values: dict[str, Any] = {"healthy": healthy, "last_error": error}
    if healthy:
        values["last_seen"] = now()
    session.execute(update(ServerRow).where(col(ServerRow.id) == server_id).values(**values))
