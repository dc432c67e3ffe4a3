"""API-key use cases: create, authenticate, touch, revoke, rotate."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import exists, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, or_, select

from orchestrator.core import limits
from orchestrator.core.errors import Conflict, InvalidInput, Unauthorized
from orchestrator.core.keys import (
    KEEP,
    KEY_PREFIX,
    NAME,
    NAME_RULE,
    TOUCH_INTERVAL_S,
    _utc,
    check_usable,
    hash_key,
    is_admin,
    key_state,
    leaves_no_admin,
    needs_touch,
    parse_expiry,
    parse_grace,
    parse_roles,
    usable,
)
from orchestrator.db import audit
from orchestrator.db.keys import _holds_admin, get_key
from orchestrator.db.tables import ApiKey, now

log = logging.getLogger(__name__)


def _new(session: Session, name: str, roles: list[str], expires_at: datetime | None) -> tuple[ApiKey, str]:
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    by = audit.actor(session)
    row = ApiKey(name=name, key_hash=hash_key(plain), roles=roles, expires_at=expires_at,
                 created_by=by.id if by else None)
    session.add(row)
    return row, plain


def create_key(session: Session, name: str, roles: list[str], expires: str | None = None,
               max_name_length: int = 128) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored. ``expires``: see ``parse_expiry``."""
    limits.check_name(name, "key name", max_name_length, pattern=NAME, rule=NAME_RULE)
    row, plain = _new(session, name, parse_roles(roles), parse_expiry(expires, now()))
    session.flush()
    audit.record(session, "key.create", row.id, {"name": row.name, "roles": row.roles,
                                                 "expires_at": row.expires_at})
    session.commit()
    return row, plain


def authenticate(session: Session, key: str | None) -> ApiKey:
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    return check_usable(row, now())


def touch(session: Session, row: ApiKey, at: datetime | None = None, interval_s: float = TOUCH_INTERVAL_S) -> bool:
    """Record a use of ``row`` when its last recorded use is older than ``interval_s``; commits. One
    conditional UPDATE, so concurrent requests write once. Best effort: a database error is logged, never
    raised (a request is not failed for its bookkeeping). True when this call wrote."""
    at = at or now()
    if not needs_touch(row.last_used_at, at, interval_s):
        return False
    cutoff = at - timedelta(seconds=interval_s)
    try:
        res = session.execute(update(ApiKey).where(col(ApiKey.id) == row.id, or_(
            col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) <= cutoff)).values(last_used_at=at)
            .execution_options(synchronize_session=False))
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("could not record the last use of key %s: %s", row.id, exc)
        return False
    set_committed_value(row, "last_used_at", at)
    return res.rowcount == 1


def _check_revocable(session: Session, row: ApiKey, at: datetime) -> None:
    """Conflict (409) for a key revoked already and for the last usable admin key."""
    if key_state(row, at) == "revoked":
        raise Conflict(f"key {row.id} ('{row.name}') was revoked already at "
                       f"{_utc(row.revoked_at).isoformat(timespec='seconds')}")
    if leaves_no_admin(session.exec(select(ApiKey)), row, at):
        raise Conflict(f"key {row.id} ('{row.name}') is the last admin key: create another admin key first "
                       "(medialab keys create --role admin)")


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke a key now. Refused (409) for the last usable admin key, and for a key revoked already.

    Atomic against concurrent revokes (two admins revoking the last two admin keys at once): the UPDATE
    only applies while the key is not revoked and, for a usable admin key, while another active admin key
    exists; on PostgreSQL the admin rows are locked first (FOR UPDATE), so the second revoke waits for the
    first and its UPDATE sees the first's commit (SQLite runs one writer at a time)."""
    row = get_key(session, ref)
    at = now()
    _check_revocable(session, row, at)
    conditions = [col(ApiKey.id) == row.id, or_(col(ApiKey.revoked_at).is_(None), col(ApiKey.revoked_at) > at)]
    if is_admin(row) and usable(row, at):
        session.exec(select(ApiKey.id).where(_holds_admin()).with_for_update()).all()
        other = aliased(ApiKey)  # the rule of leaves_no_admin: another admin key that is active
        conditions.append(exists().where(col(other.id) != row.id, _holds_admin(other), col(other.revoked_at).is_(None),
                                         or_(col(other.expires_at).is_(None), col(other.expires_at) > at)))
    res = session.execute(update(ApiKey).where(*conditions).values(revoked_at=at)
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:  # another revoke got there first: say what holds now
        session.rollback()
        session.refresh(row)
        _check_revocable(session, row, now())
        raise Conflict(f"key {row.id} ('{row.name}') changed while it was being revoked: try again")
    set_committed_value(row, "revoked_at", at)
    audit.record(session, "key.revoke", row.id, {"name": row.name, "roles": row.roles})
    session.commit()
    return row


def rotate_key(session: Session, ref: str, grace: str | None = None,
               expires: str | None | object = KEEP) -> tuple[ApiKey, str, ApiKey]:
    """A new secret for a key: a new key with the same name, roles and expiry (``expires`` overrides it;
    ``never``: none), and the old key revoked, at once or after ``grace``. Returns (new, plain, old)."""
    old = get_key(session, ref)
    at = now()
    if key_state(old, at) == "revoked":
        raise Conflict(f"key {old.id} ('{old.name}') is revoked: create a new key instead")
    period = parse_grace(grace)
    expires_at = _utc(old.expires_at) if expires is KEEP else parse_expiry(expires, at)  # type: ignore[arg-type]
    if expires_at is not None and expires_at <= at:
        raise InvalidInput(f"key {old.id} ('{old.name}') expired at {expires_at.isoformat(timespec='seconds')}: "
                           "give the new key an expiry (--expires 30d, or never)")
    new, plain = _new(session, old.name, list(old.roles), expires_at)
    until = at + period
    if old.revoked_at is None or _utc(old.revoked_at) > until:
        old.revoked_at = until
    session.add(old)
    session.flush()
    audit.record(session, "key.rotate", old.id, {"name": old.name, "new_key": new.id, "roles": new.roles,
                                                 "grace_s": period.total_seconds(), "expires_at": expires_at})
    session.commit()
    return new, plain, old
