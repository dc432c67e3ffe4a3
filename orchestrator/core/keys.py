"""API-key rules: roles, key states, durations (pure, no I/O)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError

from orchestrator.core.errors import Forbidden, InvalidInput, Unauthorized


class ApiKey(Protocol):
    """What the rules read of a key (``db.tables.ApiKey`` is one)."""

    id: str
    name: str
    roles: list[str]
    revoked_at: datetime | None
    expires_at: datetime | None


K = TypeVar("K", bound=ApiKey)


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


def check_usable(row: K | None, at: datetime) -> K:
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
    too_far = InvalidInput(f"expiry {text[:40]!r} is beyond the limit keys.MAX_EXPIRY={MAX_EXPIRY.days}d",
                           limit="keys.MAX_EXPIRY", value=f"{MAX_EXPIRY.days}d")
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
        raise InvalidInput(f"grace period {text!r} is over the limit keys.MAX_GRACE={MAX_GRACE.days}d",
                           limit="keys.MAX_GRACE", value=f"{MAX_GRACE.days}d")
    return grace


def parse_roles(roles: Iterable[str]) -> list[str]:
    try:
        parsed = sorted({Role(r).value for r in roles})
    except ValueError as exc:
        raise InvalidInput(f"unknown role in {list(roles)}; roles: {', '.join(r.value for r in Role)}") from exc
    if not parsed:
        raise InvalidInput("a key needs at least one role")
    return parsed


def may(key: ApiKey, *allowed: Role) -> bool:
    """Whether the key is admin or holds one of the allowed roles (none listed: any valid key may)."""
    return not allowed or Role.admin in key.roles or any(r in key.roles for r in allowed)


def authorize(key: ApiKey, *allowed: Role) -> None:
    """Pass when ``may(key, *allowed)``, else Forbidden naming the roles needed."""
    if may(key, *allowed):
        return
    raise Forbidden(f"key '{key.name}' lacks the role for this: needs one of {', '.join(allowed)}")
