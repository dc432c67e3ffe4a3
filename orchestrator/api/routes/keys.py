"""API keys (``/v1/keys``, admin only): list, create, revoke, rotate. A plain key is returned once, on create
or rotate, and never again; hashes are never returned. Keys are referred to by id or name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from orchestrator.api.deps import AdminKey, CtxDep, SessionDep
from orchestrator.api.schemas import KeyCreate, KeyCreated, KeyOut, KeyRotate, KeyRotated
from orchestrator.app import keys as key_app
from orchestrator.core import keys
from orchestrator.db import keys as key_db
from orchestrator.db.tables import ApiKey, now

router = APIRouter(prefix="/keys", tags=["keys"])
Ref = Annotated[str, Path(max_length=256, description="The key's id or name.")]


def key_out(row: ApiKey) -> KeyOut:
    return KeyOut(id=row.id, name=row.name, roles=row.roles, state=keys.key_state(row, now()),
                  created_at=row.created_at, created_by=row.created_by, expires_at=row.expires_at,
                  last_used_at=row.last_used_at, revoked_at=row.revoked_at)


@router.get("", response_model=list[KeyOut])
def list_keys(session: SessionDep, _: AdminKey,
              include_revoked: Annotated[bool, Query(description="Also revoked keys.")] = False) -> list[KeyOut]:
    return [key_out(k) for k in key_db.list_keys(session, include_revoked)]


AMBIGUOUS = {409: {"description": "Several live keys have this name: give the id",
                   "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}


@router.get("/{ref}", response_model=KeyOut, responses=AMBIGUOUS)
def get(ref: Ref, session: SessionDep, _: AdminKey) -> KeyOut:
    return key_out(key_db.get_key(session, ref))


@router.post("", status_code=201, response_model=KeyCreated)
def create(body: KeyCreate, ctx: CtxDep, session: SessionDep, _: AdminKey) -> KeyCreated:
    """A new key; the plain key is in this answer only."""
    row, plain = key_app.create_key(session, body.name, body.roles, body.expires,
                                 max_name_length=ctx.settings.max_name_length)
    return KeyCreated(**key_out(row).model_dump(), key=plain)


@router.post("/{ref}/revoke", response_model=KeyOut)
def revoke(ref: Ref, session: SessionDep, _: AdminKey) -> KeyOut:
    """Refused (409) for the last admin key."""
    return key_out(key_app.revoke_key(session, ref))


@router.post("/{ref}/rotate", response_model=KeyRotated)
def rotate(ref: Ref, session: SessionDep, _: AdminKey,
           body: Annotated[KeyRotate | None, Body()] = None) -> KeyRotated:
    """A new secret with the same name, roles and expiry; the old key is revoked at once or after ``grace``."""
    body = body or KeyRotate()
    new, plain, old = key_app.rotate_key(session, ref, body.grace, keys.KEEP if body.expires is None else body.expires)
    return KeyRotated(**key_out(new).model_dump(), key=plain, previous=key_out(old))
