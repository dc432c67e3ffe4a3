"""What each API route needs, read from the routes themselves: the roles its ``require`` dependency asks for
and whether it takes a form (an upload). The request guard and the OpenAPI error declarations both use it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from orchestrator.core.keys import Role


def api_routes(routes: list[Any]) -> Iterator[tuple[str, set[str], APIRoute]]:
    """(full path, methods, route) of every API route, included routers too (FastAPI >= 0.16x keeps an
    included router as one nested entry of ``app.routes``)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:
        yield from ((r.path_format, r.methods, r) for r in routes if isinstance(r, APIRoute))
        return
    for c in contexts(routes):
        if isinstance(c.original_route, APIRoute):
            yield c.path_format, c.original_route.methods, c.original_route


def route_roles(dependant: Dependant) -> tuple[Role, ...] | None:
    """The roles a route's ``require`` dependency asks for (``()``: any valid key), None when it needs no key."""
    for dep in dependant.dependencies:
        roles = getattr(dep.call, "medialab_roles", None)
        if roles is not None:
            return roles
        found = route_roles(dep)
        if found is not None:
            return found
    return None


def takes_form(dependant: Dependant) -> bool:
    """The route reads a form (``File``/``Form`` parameters: an upload), not a JSON body."""
    return any(isinstance(f.field_info, params.Form) for f in dependant.body_params) or any(
        takes_form(d) for d in dependant.dependencies)


@dataclass(frozen=True)
class RouteNeeds:
    roles: tuple[Role, ...] | None  # None: no key needed
    form: bool  # an upload: max_upload_bytes applies instead of max_body_bytes


def needs(route: APIRoute) -> RouteNeeds:
    return RouteNeeds(route_roles(route.dependant), takes_form(route.dependant))


def event_stream_responses(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an event-stream route (``responses=event_stream_responses(EventOut, ...)``):
    200 as ``text/event-stream`` whose events' data is ``model``, or, with ``follow=false``, a JSON list of
    them, so a client generator emits the model's type. The list's ``model`` puts ``model`` in the schema
    components, which the stream's ``$ref`` names."""
    return {200: {"description": description, "model": list[model],  # type: ignore[valid-type]
                  "content": {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}
