"""One rule for ids given by a person: the full id or a unique prefix of it (the CLI prints 8 characters).

Never commits: a read in the caller's session."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlmodel import Session, col, select

from orchestrator.core.errors import Conflict, NotFound

MIN_PREFIX = 4
"""The shortest prefix looked up: shorter ones are refused as unknown (they would match too much)."""
SHOWN = 5
"""How many candidates an ambiguous prefix names."""

T = TypeVar("T")


def escape_like(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '\\'`` (``%`` and ``_`` are no wildcards)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def by_prefix(session: Session, model: type[T], ref: str, what: str, id_field: str = "id") -> T | None:
    """The row of ``model`` whose ``id_field`` starts with ``ref``; None when none does or ``ref`` is shorter
    than ``MIN_PREFIX``; Conflict (409, naming a few candidates) when more than one does."""
    if len(ref) < MIN_PREFIX:
        return None
    column: Any = col(getattr(model, id_field))
    rows = list(session.exec(select(model).where(column.like(escape_like(ref) + "%", escape="\\"))
                             .order_by(column).limit(SHOWN + 1)))
    if len(rows) > 1:
        ids = [str(getattr(r, id_field)) for r in rows[:SHOWN]]
        more = ", ..." if len(rows) > SHOWN else ""
        raise Conflict(f"{what} id prefix {ref[:64]!r} is ambiguous: {', '.join(ids)}{more}; give more characters",
                       candidates=ids)
    return rows[0] if rows else None


def get_by_id(session: Session, model: type[T], ref: str, what: str, id_field: str = "id") -> T:
    """The row by its full id or a unique prefix of it; NotFound (404) naming ``what`` when there is none."""
    row = session.get(model, ref) if id_field == "id" else None
    if row is None:
        row = by_prefix(session, model, ref, what, id_field)
    if row is None:
        raise NotFound(f"unknown {what} {ref[:200]}")
    return row
