"""API-key rows: reads (never commits)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, String, cast
from sqlmodel import Session, col, or_, select

from orchestrator.core.errors import Conflict, NotFound
from orchestrator.core.keys import Role, key_state
from orchestrator.db.ids import by_prefix
from orchestrator.db.tables import ApiKey, now


def has_keys(session: Session) -> bool:
    return session.exec(select(ApiKey).limit(1)).first() is not None


def list_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    q = select(ApiKey).order_by(col(ApiKey.created_at))
    if not include_revoked:
        q = q.where(or_(col(ApiKey.revoked_at).is_(None), col(ApiKey.revoked_at) > now()))
    return list(session.exec(q))


def get_key(session: Session, ref: str) -> ApiKey:
    """A key by id, by name, or by a unique prefix of its id (``db/ids.py``). A name held by several keys picks
    the one not being revoked; if that is still more than one, the id is needed (409)."""
    row = session.get(ApiKey, ref)
    if row is not None:
        return row
    named = list(session.exec(select(ApiKey).where(ApiKey.name == ref).order_by(col(ApiKey.created_at))))
    if not named:
        prefixed = by_prefix(session, ApiKey, ref, "API key")
        if prefixed is not None:
            return prefixed
        raise NotFound(f"unknown API key {ref[:64]!r} (give its id or name: medialab keys list)")
    at = now()
    for states in (("active",), ("active", "revoking", "expired")):
        live = [k for k in named if key_state(k, at) in states]
        if len(live) == 1:
            return live[0]
        if len(live) > 1:
            raise Conflict(f"{len(live)} keys are named {ref!r} ({', '.join(k.id for k in live)}): give the id")
    return named[-1]  # only revoked ones: the newest


def _holds_admin(keys: Any = ApiKey) -> ColumnElement[bool]:
    """SQL: the key (of ``keys``: ApiKey or an alias of it) holds the admin role (roles is a JSON list of
    role names, each a ``Role`` value, so the quoted name matches only that role)."""
    return cast(col(keys.roles), String).like(f'%"{Role.admin.value}"%')
