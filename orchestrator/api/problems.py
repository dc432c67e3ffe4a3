"""Errors as RFC 9457 problem+json, in one place: the exception handlers, and the error responses that the
OpenAPI document declares for each route."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.types import Send

from orchestrator.api.routing import api_routes, route_roles
from orchestrator.core.errors import MediaLabError
from orchestrator.core.server_urls import redact_value
from storage import StorageUnavailable

PROBLEM = "application/problem+json"

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """An error: ``detail`` names what was wrong; limits add ``limit`` and ``value``, validation ``errors``."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every error the API sends; credentials of any URL in it (a server's) are redacted."""
    return redact_value({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, title, detail, **extra), status_code=status, media_type=PROBLEM)


async def send_problem(send: Send, status: int, title: str, detail: str, **extra: Any) -> None:
    """The same, straight on an ASGI ``send`` (the request guard answers before the app runs)."""
    body = json.dumps(problem_body(status, title, detail, **extra), default=str).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    """Map every error to problem+json (500s too) and declare the error responses in the OpenAPI document."""

    @app.exception_handler(MediaLabError)
    async def _medialab_error(_: Request, exc: MediaLabError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.message, **exc.extra)

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
        return problem(503, "Object store unavailable", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, "Error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "Internal error", f"internal error ({type(exc).__name__}); it is logged")

    declare_errors(app)


DESCRIPTIONS = {
    401: "No API key, or an unknown, revoked or expired one",
    403: "The key lacks the role for this",
    404: "Something named in the request does not exist",
    409: "Conflicts with the current state",
    413: "Over a limit (the problem names the limit and its value)",
    422: "Invalid input (the problem names what was wrong)",
    500: "Internal error",
    503: "A dependency (the object store, the ComfyUI pool) is unavailable",
}


def error_codes(route: APIRoute, method: str) -> list[int]:
    """The error statuses a route can answer, from what it takes and which key it needs: every route may
    refuse its input (422) or fail (500); a route that names something (a path parameter) or changes something
    may find it missing (404) or its dependencies down (503); a change may conflict (409) or be too large (413).
    A route adds what else it answers in its ``responses`` (a query that names something: 404, 409)."""
    roles = route_roles(route.dependant)
    names = bool(route.dependant.path_params)
    codes = {422, 500}
    if roles is not None:
        codes |= {401} | ({403} if roles else set())
    if names or method != "GET":
        codes |= {404, 503}
    if method != "GET":
        codes |= {409, 413}
    codes |= {int(c) for c in route.responses if str(c).isdigit() and int(c) >= 400}  # declared by the route
    return sorted(codes)


def declare_errors(app: FastAPI) -> None:
    """Add the problem+json error responses to each operation of the OpenAPI document (FastAPI's own 422
    schema is replaced: the service never sends it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        ref = {"$ref": "#/components/schemas/Problem"}
        for path, methods, route in api_routes(app.routes):
            if not route.include_in_schema:
                continue
            for method in methods:
                op = schema["paths"][path][method.lower()]
                responses = op.setdefault("responses", {})
                for code in error_codes(route, method):
                    responses[str(code)] = {"description": DESCRIPTIONS[code], "content": {PROBLEM: {"schema": ref}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
