"""``/v1/me``: the calling key and what it may do, so a client offers only what its role can do."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import AnyKey
from orchestrator.api.schemas_studio import MeOut
from orchestrator.core.keys import Role, is_admin, may

router = APIRouter(prefix="/me", tags=["me"])


@router.get("", response_model=MeOut)
def get(key: AnyKey) -> MeOut:
    """Any valid key. The ``can_*`` flags follow the role rule of every route (``core.keys.may``: admin holds
    every role)."""
    return MeOut(id=key.id, name=key.name, roles=[str(r) for r in key.roles], can_run=may(key, Role.run),
                 can_export=may(key, Role.export), can_publish=may(key, Role.publish),
                 can_train=may(key, Role.train), is_admin=is_admin(key))
