"""API keys and roles. Keys are shown once and stored only as a sha256."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

from sqlmodel import Session, select

from orchestrator.errors import Forbidden, InvalidInput, Unauthorized
from orchestrator.models import ApiKey

KEY_PREFIX = "mlk_"


class Role(StrEnum):
    admin = "admin"  # everything
    run = "run"  # upload inputs, submit and cancel jobs
    publish = "publish"  # publish template versions
    export = "export"  # download artifact bytes
    train = "train"  # a trainer process: claim training jobs, report progress, upload results


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, roles: list[str]) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    try:
        parsed = sorted({Role(r).value for r in roles})
    except ValueError as exc:
        raise InvalidInput(f"unknown role in {roles}; roles: {', '.join(r.value for r in Role)}") from exc
    if not parsed:
        raise InvalidInput("a key needs at least one role")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(plain), roles=parsed)
    session.add(row)
    session.commit()
    return row, plain


def has_keys(session: Session) -> bool:
    return session.exec(select(ApiKey).limit(1)).first() is not None


def authenticate(session: Session, key: str | None) -> ApiKey:
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("unknown or revoked API key")
    return row


def authorize(key: ApiKey, *allowed: Role) -> None:
    """Pass when the key is admin or holds one of the allowed roles (none listed: any valid key)."""
    if not allowed or Role.admin in key.roles or any(r in key.roles for r in allowed):
        return
    raise Forbidden(f"key '{key.name}' lacks the role for this: needs one of {', '.join(allowed)}")
