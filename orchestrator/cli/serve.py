"""``medialab init`` and ``medialab serve``: create the database, serve the API."""

from __future__ import annotations

import logging

import typer

from orchestrator.app import keys as key_app
from orchestrator.cli.common import console, context
from orchestrator.db import keys as key_db


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


def serve(host: str = "127.0.0.1", port: int = 8000, dispatch: bool = True) -> None:
    """Serve the API under /v1 (and dispatch jobs, starting a local ComfyUI if no pool is configured)."""
    import uvicorn

    from orchestrator.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    uvicorn.run(create_app(dispatch=dispatch), host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(serve)
