"""The model registry (``/v1/models``): trained LoRAs, their state and their distribution to the pool."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import AdminKey, AnyKey, CtxDep, PublishKey, SessionDep
from orchestrator.api.schemas import LoraModelOut, QueryText
from orchestrator.training.app import registry

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[LoraModelOut])
def list_models(session: SessionDep, _: AnyKey, name: QueryText = None,
                state: QueryText = None) -> list[LoraModelOut]:
    return [LoraModelOut.model_validate(m) for m in registry.list_models(session, name, state)]


@router.get("/{ref}", response_model=LoraModelOut)
def get(ref: str, session: SessionDep, _: AnyKey) -> LoraModelOut:
    """By id, sha256 (or 8+ leading hex digits), file name, name@vN or name (newest version)."""
    return LoraModelOut.model_validate(registry.get_model(session, ref))


@router.post("/{ref}/approve", response_model=LoraModelOut)
def approve(ref: str, session: SessionDep, _: PublishKey) -> LoraModelOut:
    return LoraModelOut.model_validate(registry.set_state(session, ref, registry.LoraState.approved))


@router.post("/{ref}/withdraw", response_model=LoraModelOut)
def withdraw(ref: str, session: SessionDep, _: PublishKey) -> LoraModelOut:
    """Jobs naming it are refused from now on; the file stays on the servers."""
    return LoraModelOut.model_validate(registry.set_state(session, ref, registry.LoraState.withdrawn))


@router.post("/{ref}/distribute", response_model=LoraModelOut)
def distribute(ref: str, ctx: CtxDep, session: SessionDep, _: AdminKey) -> LoraModelOut:
    """Copy it to the pool servers again (e.g. after a server joined) and refresh their capabilities."""
    model = registry.get_model(session, ref)
    registry.distribute(session, ctx.store, ctx.settings, model, ctx.pool)
    return LoraModelOut.model_validate(model)
