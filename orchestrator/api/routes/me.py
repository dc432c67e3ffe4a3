"""``/v1/me``: the calling key and what it may do, so a client offers only what its role can do."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import AnyKey
from orchestrator.api.schemas_studio import MeOut
from orchestrator.core.keys import Role

router = APIRouter(prefix="/me", tags=["me"])


@router.get("", response_model=MeOut)
def get(key: AnyKey) -> MeOut:
    """Any valid key. The ``can_*`` flags follow the role rules (admin holds every role)."""
    roles = [str(r) for r in key.roles]
    admin = Role.admin in roles

    def can(role: Role) -> bool:
        return admin or role in roles

    return MeOut(id=key.id, name=key.name, roles=roles, can_run=can(Role.run), can_export=can(Role.export),
                 can_publish=can(Role.publish), can_train=can(Role.train), is_admin=admin)
