"""The audit trail: which API key did what (never commits).

``record`` adds one ``AuditEvent`` to the session of the change it describes, so the row is committed with
that change or rolled back with it. The actor travels on the session: the API's request session carries the
caller's key in ``session.info["actor"]``; a session without one (the CLI on the host) is recorded with no
key (shown as ``@cli``). Secrets never go in: fields that name a secret are dropped and every string passes
the one credential redactor (``server_urls.redact``: ``user:***@`` for every URL in it, inside text too)
before the row is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from orchestrator.core.errors import InvalidInput
from orchestrator.core.limits import MAX_OFFSET
from orchestrator.core.server_urls import redact_value
from orchestrator.db.tables import ApiKey, AuditEvent

ACTIONS = frozenset({
    "job.submit", "job.cancel",
    "batch.create", "batch.cancel", "batch.retry",
    "template.publish", "template.deprecate",
    "pipeline.publish", "pipeline.run", "pipeline.cancel", "pipeline.resume",
    "model.approve", "model.withdraw",
    "artifact.delete",
    "server.add", "server.update", "server.drain", "server.activate", "server.remove", "server.refresh",
    "key.create", "key.revoke", "key.rotate",
})
CLI = "@cli"  # names the events without a key (the CLI on the host); no key name starts with @
SECRET_FIELDS = frozenset({"key", "plain", "secret", "password", "token", "key_hash", "authorization"})
MAX_LIMIT = 500


def actor(session: Session) -> ApiKey | None:
    """The key the session acts for (None: the CLI)."""
    return session.info.get("actor")


def _plain(value: Any) -> Any:
    """``value`` as JSON (mappings with string keys, lists, scalars, dates as ISO text) without the fields
    named like a secret."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if str(k).lower() not in SECRET_FIELDS}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def scrub(value: Any) -> Any:
    """``value`` fit for the audit trail: fields named like a secret dropped, then every string through the
    one credential redactor (``server_urls.redact_value``)."""
    return redact_value(_plain(value))


def record(session: Session, action: str, target: str, data: dict[str, Any] | None = None) -> AuditEvent:
    """Add an audit row for ``action`` on ``target`` to the session; the caller's commit writes it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")  # a typo in our code, not a user error
    key = actor(session)
    event = AuditEvent(api_key_id=key.id if key else None, key_name=key.name if key else None, action=action,
                       target=scrub(str(target)), data=scrub(data) if data else None)
    session.add(event)
    return event


def query(session: Session, *, action: str | None = None, key: str | None = None, target: str | None = None,
          since: datetime | None = None, limit: int = 50, offset: int = 0) -> list[AuditEvent]:
    """Newest first. ``action`` is exact (``job.cancel``) or a group (``job``: every ``job.*``); ``key`` is a
    key id or name, or ``@cli`` for the host's CLI; ``target`` is the id or name acted on."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit {limit} is outside 1..{MAX_LIMIT} (audit.MAX_LIMIT={MAX_LIMIT})",
                           limit="audit.MAX_LIMIT", value=MAX_LIMIT)
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset {offset} is outside 0..{MAX_OFFSET} (limits.MAX_OFFSET={MAX_OFFSET})",
                           limit="limits.MAX_OFFSET", value=MAX_OFFSET)
    q = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit).offset(offset)
    if action:
        q = q.where(AuditEvent.action == action if "." in action
                    else col(AuditEvent.action).startswith(f"{action}.", autoescape=True))
    if key == CLI:
        q = q.where(col(AuditEvent.api_key_id).is_(None))
    elif key:
        q = q.where(or_(AuditEvent.api_key_id == key, AuditEvent.key_name == key))
    if target:
        q = q.where(AuditEvent.target == target)
    if since:
        q = q.where(AuditEvent.at >= since)
    return list(session.exec(q))
