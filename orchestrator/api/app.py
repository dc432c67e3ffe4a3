"""The FastAPI application: routes under /v1, errors as problem+json, one Context per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from orchestrator import __version__
from orchestrator.api.deps import AnyKey, CtxDep
from orchestrator.api.routes import artifacts, jobs, models, servers, templates, trainings
from orchestrator.context import Context
from orchestrator.errors import MediaLabError
from orchestrator.settings import Settings, get_settings
from orchestrator.training.trainer import start_local
from storage import StorageUnavailable

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: object) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def create_app(settings: Settings | None = None, dispatch: bool = True) -> FastAPI:
    """``dispatch=False`` serves the API without running jobs (they stay QUEUED)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = Context(settings or get_settings())
        app.state.ctx = ctx
        try:
            ctx.start_pool()
            if dispatch:
                ctx.start_dispatcher()
                ctx.local_trainer = start_local(ctx)  # type: ignore[attr-defined]
            yield
        finally:
            local = getattr(ctx, "local_trainer", None)
            if local is not None:
                local.stop()
            ctx.close()

    app = FastAPI(title="Media Lab orchestrator", version=__version__, lifespan=lifespan)

    @app.exception_handler(MediaLabError)
    async def _medialab_error(_: Request, exc: MediaLabError) -> JSONResponse:
        return JSONResponse(exc.to_problem(), status_code=exc.status, media_type=PROBLEM)

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

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics(ctx: CtxDep, _: AnyKey) -> Response:
        """Prometheus text format (scrape with an API key as bearer token)."""
        return Response(ctx.metrics.render() if ctx.metrics else b"", media_type=CONTENT_TYPE_LATEST)

    for router in (artifacts.router, jobs.router, servers.router, templates.router, trainings.router, models.router):
        app.include_router(router, prefix="/v1")
    return app
