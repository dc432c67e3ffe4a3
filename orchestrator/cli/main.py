"""The ``medialab`` command: serve the API, run and watch jobs, manage keys and templates.

One module per command group; this one only builds the root app and adds them (the order they are added
in is the order ``medialab --help`` lists them). What the groups share is in ``common``."""

from __future__ import annotations

import typer

from orchestrator.cli import (
    audit,
    batch,
    burst,
    frames,
    imports,
    jobs,
    keys,
    pipelines,
    serve,
    servers,
    templates,
    training,
    workbench,
)

app = typer.Typer(help="Media Lab: versioned ComfyUI templates run on ComfyUI servers.", no_args_is_help=True)

for group in (serve, jobs, batch, imports, frames, templates, pipelines, keys, audit, servers, burst, training,
              workbench):
    group.register(app)
