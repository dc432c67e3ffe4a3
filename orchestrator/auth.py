"""API keys and roles. Keys are shown once and stored only as a sha256.

A key is usable until it is revoked (``revoked_at``; a rotation with a grace period sets it in the future)
or expires (``expires_at``). Its last use is written at most once a minute (``touch``), so a busy key does
not write on every request. Keys are referred to by id or by name; the pure rules (``key_state``,
``needs_touch``, ``leaves_no_admin``, ``parse_expiry``) are separate from the database functions.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import ColumnElement, String, cast, exists, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, or_, select

from orchestrator import audit, limits
from orchestrator.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from orchestrator.models import ApiKey, now

log = logging.getLogger(__name__)

KEY_PREFIX = "mlk_"
TOUCH_INTERVAL_S = 60.0  # last_used_at is written at most this often per key
MAX_EXPIRY = timedelta(days=3650)  # the furthest expiry a key may get
MAX_GRACE = timedelta(days=7)  # the longest an old key stays usable after a rotation
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")  # a key name (checked by limits.check_name)
NAME_RULE = "use letters, digits and . _ @ + -, starting with a letter or digit"
DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
KEEP = object()  # rotate_key: keep the old key's expiry
_DATETIME = TypeAdapter(datetime)
_TIMEDELTA = TypeAdapter(timedelta)


class Role(StrEnum):
    admin = "admin"  # everything
    run = "run"  # upload inputs, submit and cancel jobs
    publish = "publish"  # publish template versions
    export = "export"  # download artifact bytes
    train = "train"  # a trainer process: claim training jobs, report progress, upload results


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- pure rules ------------------------------------------------------------------------------------
def _utc(when: datetime | None) -> datetime | None:
    return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)


def key_state(row: ApiKey, at: datetime) -> str:
    """``revoked``, ``expired``, ``revoking`` (usable until a rotation's grace period ends) or ``active``."""
    revoked, expires = _utc(row.revoked_at), _utc(row.expires_at)
    if revoked is not None and revoked <= at:
        return "revoked"
    if expires is not None and expires <= at:
        return "expired"
    return "revoking" if revoked is not None else "active"


def usable(row: ApiKey, at: datetime) -> bool:
    return key_state(row, at) in ("active", "revoking")


def check_usable(row: ApiKey | None, at: datetime) -> ApiKey:
    """The key when it may be used at ``at``; Unauthorized otherwise (unknown and revoked read the same)."""
    if row is None or key_state(row, at) == "revoked":
        raise Unauthorized("unknown or revoked API key")
    if key_state(row, at) == "expired":
        raise Unauthorized(f"API key '{row.name}' expired at {_utc(row.expires_at).isoformat(timespec='seconds')}; "
                           "ask an admin for a new one (medialab keys rotate)")
    return row


def needs_touch(last_used_at: datetime | None, at: datetime, interval_s: float = TOUCH_INTERVAL_S) -> bool:
    """Whether a use at ``at`` is to be written: never written yet, or not within the last ``interval_s``."""
    last = _utc(last_used_at)
    return last is None or (at - last).total_seconds() >= interval_s


def is_admin(row: ApiKey) -> bool:
    return Role.admin in row.roles


def leaves_no_admin(keys: Iterable[ApiKey], target: ApiKey, at: datetime) -> bool:
    """Whether revoking ``target`` leaves no usable admin key where there was one (the last way in)."""
    if not (is_admin(target) and usable(target, at)):
        return False
    return not any(k.id != target.id and is_admin(k) and key_state(k, at) == "active" for k in keys)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or an ISO 8601 duration (``P30D``)."""
    m = DURATION.match(text)
    if m:
        return timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])
    try:
        if text.strip().upper().startswith("P"):
            return _TIMEDELTA.validate_python(text.strip())
    except ValidationError:
        pass
    raise InvalidInput(f"{what} {text[:40]!r}: give a number with s, m, h, d or w (e.g. 30d, 12h) or an ISO 8601 "
                       "duration (P30D)")


def parse_expiry(text: str | None, at: datetime) -> datetime | None:
    """When a key given ``text`` expires: a duration from ``at`` (``30d``, ``12h``), an ISO date or date-time
    (UTC unless it says otherwise), or ``never``/empty (None). In the past or beyond ``MAX_EXPIRY``: refused."""
    if text is None or text.strip().lower() in ("", "never", "none"):
        return None
    too_far = InvalidInput(f"expiry {text[:40]!r} is beyond the limit auth.MAX_EXPIRY={MAX_EXPIRY.days}d",
                           limit="auth.MAX_EXPIRY", value=f"{MAX_EXPIRY.days}d")
    if "-" in text and not text.strip().upper().startswith("P"):
        try:
            when = _utc(_DATETIME.validate_python(text.strip()))
        except ValidationError as exc:
            raise InvalidInput(f"expiry {text[:40]!r} is not an ISO date or date-time (e.g. 2027-01-31 or "
                               "2027-01-31T12:00:00Z)") from exc
    else:
        try:
            when = at + parse_duration(text, "expiry")
        except OverflowError as exc:
            raise too_far from exc
    if when <= at:
        raise InvalidInput(f"expiry {text[:40]!r} ({when.isoformat(timespec='seconds')}) is in the past")
    if when - at > MAX_EXPIRY:
        raise too_far
    return when


def parse_since(text: str | None, at: datetime) -> datetime | None:
    """A point in the past for queries: an ISO date or date-time (UTC unless it says otherwise), or a
    duration back from ``at`` (``1h``, ``7d``); None for none."""
    if text is None or not text.strip():
        return None
    if "-" in text and not text.strip().upper().startswith("P"):
        try:
            return _utc(_DATETIME.validate_python(text.strip()))
        except ValidationError as exc:
            raise InvalidInput(f"since {text[:40]!r} is neither an ISO date-time nor a duration (1h, 7d)") from exc
    try:
        return at - parse_duration(text, "since")
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def parse_grace(text: str | None) -> timedelta:
    """A rotation's grace period (``None``: none, the old key is revoked at once), at most ``MAX_GRACE``."""
    if text is None or not text.strip() or text.strip() == "0":
        return timedelta(0)
    try:
        grace = parse_duration(text, "grace period")
    except OverflowError:
        grace = MAX_GRACE * 2
    if grace > MAX_GRACE:
        raise InvalidInput(f"grace period {text!r} is over the limit auth.MAX_GRACE={MAX_GRACE.days}d",
                           limit="auth.MAX_GRACE", value=f"{MAX_GRACE.days}d")
    return grace


def parse_roles(roles: Iterable[str]) -> list[str]:
    try:
        parsed = sorted({Role(r).value for r in roles})
    except ValueError as exc:
        raise InvalidInput(f"unknown role in {list(roles)}; roles: {', '.join(r.value for r in Role)}") from exc
    if not parsed:
        raise InvalidInput("a key needs at least one role")
    return parsed


# -- the database ----------------------------------------------------------------------------------
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


def has_keys(session: Session) -> bool:
    return session.exec(select(ApiKey).limit(1)).first() is not None


def list_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    q = select(ApiKey).order_by(col(ApiKey.created_at))
    if not include_revoked:
        q = q.where(or_(col(ApiKey.revoked_at).is_(None), col(ApiKey.revoked_at) > now()))
    return list(session.exec(q))


def get_key(session: Session, ref: str) -> ApiKey:
    """A key by id or by name. A name held by several keys picks the one not being revoked; if that is still
    more than one, the id is needed (409)."""
    row = session.get(ApiKey, ref)
    if row is not None:
        return row
    named = list(session.exec(select(ApiKey).where(ApiKey.name == ref).order_by(col(ApiKey.created_at))))
    if not named:
        raise NotFound(f"unknown API key {ref[:64]!r} (give its id or name: medialab keys list)")
    at = now()
    for states in (("active",), ("active", "revoking", "expired")):
        live = [k for k in named if key_state(k, at) in states]
        if len(live) == 1:
            return live[0]
        if len(live) > 1:
            raise Conflict(f"{len(live)} keys are named {ref!r} ({', '.join(k.id for k in live)}): give the id")
    return named[-1]  # only revoked ones: the newest


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


def _holds_admin(keys: Any = ApiKey) -> ColumnElement[bool]:
    """SQL: the key (of ``keys``: ApiKey or an alias of it) holds the admin role (roles is a JSON list of
    role names, each a ``Role`` value, so the quoted name matches only that role)."""
    return cast(col(keys.roles), String).like(f'%"{Role.admin.value}"%')


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


def authorize(key: ApiKey, *allowed: Role) -> None:
    """Pass when the key is admin or holds one of the allowed roles (none listed: any valid key)."""
    if not allowed or Role.admin in key.roles or any(r in key.roles for r in allowed):
        return
    raise Forbidden(f"key '{key.name}' lacks the role for this: needs one of {', '.join(allowed)}")
