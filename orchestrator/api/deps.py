"""FastAPI dependencies: the context, a database session, and API-key auth with roles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlmodel import Session

from orchestrator import auth
from orchestrator.auth import Role
from orchestrator.context import Context
from orchestrator.models import ApiKey


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def get_session(ctx: Annotated[Context, Depends(get_ctx)]) -> Iterator[Session]:
    with ctx.db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[Context, Depends(get_ctx)]


def require(*roles: Role) -> Callable[..., ApiKey]:
    def dep(session: SessionDep, authorization: Annotated[str | None, Header()] = None,
            x_api_key: Annotated[str | None, Header()] = None) -> ApiKey:
        key = x_api_key
        if authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        row = auth.authenticate(session, key)
        auth.authorize(row, *roles)
        return row

    return dep


AnyKey = Annotated[ApiKey, Depends(require())]
RunKey = Annotated[ApiKey, Depends(require(Role.run))]
ExportKey = Annotated[ApiKey, Depends(require(Role.run, Role.export))]
AdminKey = Annotated[ApiKey, Depends(require(Role.admin))]
PublishKey = Annotated[ApiKey, Depends(require(Role.publish))]
