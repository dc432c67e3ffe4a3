"""``medialab init`` and ``medialab serve``: create the database, serve the API."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.app import keys as key_app
from orchestrator.cli.common import console, context, fail
from orchestrator.db import keys as key_db
from orchestrator.db import servers as server_db
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def init(name: str = "admin") -> None:
    """Create the database and sync the template library; print the first admin key."""
    ctx = context()
    with ctx.db.session() as s:
        if key_db.has_keys(s):
            console.print(f"database ready at {ctx.settings.database}; keys exist already (medialab keys create)")
            return
        _row, plain = key_app.create_key(s, name, ["admin"])
    console.print(f"database ready at {ctx.settings.database}")
    console.print(f"first admin API key (shown once): [bold]{plain}[/bold]", soft_wrap=True)


WORKER_DISPATCH_ENV = "_MEDIALAB_SERVE_DISPATCH"  # how ``serve`` tells its uvicorn worker processes --no-dispatch


def serve(host: str = "127.0.0.1", port: int = 8000, dispatch: bool = True,
          workers: Annotated[int, typer.Option(min=1, help=(
              "API processes (uvicorn workers), PostgreSQL only. Each is a dispatcher replica sharing the queue "
              "(FOR UPDATE SKIP LOCKED); the pool's servers must be registered or configured (no local worker), "
              "and the embedded trainer does not run (start `medialab trainer`)."))] = 1) -> None:
    """Serve the API under /v1 (and dispatch jobs, starting a local ComfyUI if no pool is configured)."""
    import uvicorn

    from orchestrator.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers == 1:
        uvicorn.run(create_app(dispatch=dispatch), host=host, port=port)
        return
    check_workers(get_settings(), workers)
    ctx = context()  # templates synced and configured servers registered once, before the workers race to
    try:
        with ctx.db.session() as s:
            pooled = [r for r in server_db.server_rows(s) if r.source != "local"]
    finally:
        ctx.close()
    if not pooled:
        fail(f"--workers {workers} needs ComfyUI servers in the pool (MEDIALAB_COMFY_SERVERS, the servers file or "
             "`medialab servers add`): a local worker would be started once per process")
    os.environ[WORKER_DISPATCH_ENV] = "1" if dispatch else "0"
    uvicorn.run("orchestrator.cli.serve:worker_app", factory=True, host=host, port=port, workers=workers)


def check_workers(settings: Settings, workers: int) -> None:
    """More than one API process needs a database that several processes write at once: PostgreSQL."""
    if workers > 1 and settings.database.startswith("sqlite"):
        fail(f"--workers {workers} needs PostgreSQL (MEDIALAB_DATABASE_URL=postgresql+psycopg://...): SQLite "
             "takes one writer at a time, and its dispatchers would not share the queue safely; serve with "
             "--workers 1")


def worker_app() -> FastAPI:
    """One process of ``serve --workers N`` (uvicorn's app factory): the whole app, its dispatcher a replica of
    the others'; no embedded trainer (N of them would share one GPU)."""
    from orchestrator.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings().model_copy(update={"local_trainer": False})
    return create_app(settings, dispatch=os.environ.get(WORKER_DISPATCH_ENV, "1") == "1")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(serve)
