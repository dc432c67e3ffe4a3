"""FastAPI dependencies: the context, a database session, and API-key auth with roles.

The key itself is checked by the request guard (``api/guard.py``) before the body is read; ``require`` reads
the key row the guard left on the request (or checks it itself where no guard ran) and holds no database
session, so a long request such as an event stream holds no connection for its key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from orchestrator.api.guard import check_key, key_from_headers
from orchestrator.bootstrap import Context
from orchestrator.core import keys
from orchestrator.core.keys import Role
from orchestrator.db.tables import ApiKey


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def get_session(request: Request) -> Iterator[Session]:
    """The request's session; it carries the caller's key (``info["actor"]``) for the audit trail."""
    with get_ctx(request).db.session() as s:
        s.info["actor"] = getattr(request.state, "api_key", None)
        yield s


SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[Context, Depends(get_ctx)]


def require(*roles: Role) -> Callable[..., ApiKey]:
    """A key holding one of ``roles`` (admin holds all; none listed: any valid key)."""

    def dep(request: Request) -> ApiKey:
        key = getattr(request.state, "api_key", None)
        if key is None:
            headers = {k.lower(): v for k, v in request.headers.items()}
            key = request.state.api_key = check_key(get_ctx(request), key_from_headers(headers), roles)
        keys.authorize(key, *roles)  # the guard checked this route's roles; this is what the route asks for
        return key

    dep.medialab_roles = roles  # type: ignore[attr-defined]  # read by the guard
    return dep


AnyKey = Annotated[ApiKey, Depends(require())]
RunKey = Annotated[ApiKey, Depends(require(Role.run))]
ExportKey = Annotated[ApiKey, Depends(require(Role.export))]
AdminKey = Annotated[ApiKey, Depends(require(Role.admin))]
PublishKey = Annotated[ApiKey, Depends(require(Role.publish))]
TrainKey = Annotated[ApiKey, Depends(require(Role.train))]
