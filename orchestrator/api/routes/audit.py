"""The audit trail (``/v1/audit``, admin only): which key did what, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.deps import AdminKey, SessionDep
from orchestrator.api.schemas import AuditEventOut
from orchestrator.core import keys
from orchestrator.core.limits import MAX_OFFSET
from orchestrator.db import audit
from orchestrator.db.tables import now

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditEventOut])
def list_events(
    session: SessionDep, _: AdminKey,
    action: Annotated[str | None, Query(max_length=64, description="e.g. job.cancel, or job for every job.*")] = None,
    key: Annotated[str | None, Query(max_length=256, description="A key id or name; @cli: the host's CLI.")] = None,
    target: Annotated[str | None, Query(max_length=512, description="The id or name acted on.")] = None,
    since: Annotated[str | None, Query(max_length=64, description="An ISO date-time, or a duration back from "
                                                                   "now (1h, 7d).")] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[AuditEventOut]:
    return [AuditEventOut.model_validate(e) for e in audit.query(
        session, action=action, key=key, target=target, since=keys.parse_since(since, now()), limit=limit,
        offset=offset)]
