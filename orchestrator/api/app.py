"""The FastAPI application: routes under /v1, errors as problem+json, one Context per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator import __version__
from orchestrator.api import problems, studio
from orchestrator.api.deps import AnyKey, CtxDep
from orchestrator.api.guard import Guard
from orchestrator.api.routes import (
    artifacts,
    audit,
    batches,
    burst,
    frames,
    imports,
    jobs,
    keys,
    me,
    models,
    pipeline_runs,
    pipelines,
    servers,
    templates,
    trainings,
)
from orchestrator.bootstrap import Context, start_local_trainer
from orchestrator.settings import Settings, get_settings


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
                ctx.local_trainer = start_local_trainer(ctx)  # type: ignore[attr-defined]
            yield
        finally:
            local = getattr(ctx, "local_trainer", None)
            if local is not None:
                local.stop()
            ctx.close()

    app = FastAPI(title="Media Lab orchestrator", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # /docs: offline, from the studio's build (api/studio.py)
                  generate_unique_id_function=lambda r: f"{r.tags[0]}_{r.name}" if r.tags else r.name)
    app.add_middleware(Guard)  # the key and the body size, before a route reads the body

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str | bool]:
        """No key needed. ``dispatching``: false when served with ``--no-dispatch`` (queued jobs stay QUEUED
        unless another process dispatches them); the CLI's submit says so at once."""
        return {"status": "ok", "dispatching": dispatch}

    @app.get("/metrics", include_in_schema=False)
    def metrics(ctx: CtxDep, _: AnyKey) -> Response:
        """Prometheus text format (scrape with an API key as bearer token)."""
        return Response(ctx.metrics.render() if ctx.metrics else b"", media_type=CONTENT_TYPE_LATEST)

    for router in (artifacts.router, jobs.router, batches.router, servers.router, templates.router, trainings.router,
                   models.router, keys.router, audit.router, me.router, pipelines.router,
                   pipeline_runs.start_router, pipeline_runs.router, burst.router, imports.router,
                   frames.router):
        app.include_router(router, prefix="/v1")
    studio.install(app)  # /studio and /docs: static, no key
    problems.install(app)  # after the routes: it declares their error responses
    return app
