"""``medialab run``, ``medialab submit`` and ``medialab jobs``: run a job here, queue one, list, show, watch
and cancel them."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.app import admission
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import configured_servers
from orchestrator.cli.common import STATE_STYLE, console, context, err, fail, follow, job_params, report, session
from orchestrator.core.errors import MediaLabError, Unavailable
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db

jobs_app = typer.Typer(help="List, show, watch and cancel jobs.", no_args_is_help=True)


def run(template: str,
        input: Annotated[Path | None, typer.Option("--input", "-i", help="File for the image/video input.")] = None,
        set_: Annotated[list[str], typer.Option("--set", "-s", help="name=value parameter.")] = [],  # noqa: B006
        version: Annotated[int | None, typer.Option(help="Template version; default: newest.")] = None,
        out: Annotated[Path, typer.Option(help="Folder for copies of the outputs.")] = Path("medialab-outputs"),
        ) -> None:
    """Run one job here and now with live progress: starts a local ComfyUI when no pool is configured."""
    logging.basicConfig(level=logging.WARNING)
    ctx = context()
    try:
        values = job_params(ctx, template, version, input, set_)
        with ctx.db.session() as s:
            admission.validate_job(s, None, template, values, version)  # fail fast, before starting ComfyUI
        with console.status("starting ComfyUI..." if not configured_servers(ctx.settings) else "connecting..."):
            pool = ctx.start_pool()
        dispatcher = ctx.start_dispatcher(dispatch=False, recover=False)  # renews this job's lease while it runs
        with ctx.db.session() as s:
            job = job_app.submit_job(s, pool, template, values, version)
        placed = dispatcher.place_now(job.id, reason="dispatched by medialab run")  # ComfyUI queues it if busy
        if placed is None:
            raise Unavailable(f"no healthy server can run job {job.id} now; it stays QUEUED for a running "
                              "'medialab serve'")
        worker = threading.Thread(target=ctx.executor.execute, args=(placed.attempt_id, placed.server), daemon=True)
        worker.start()
        try:
            final = follow(ctx, job.id)
        except KeyboardInterrupt:  # Ctrl-C: interrupt the prompt on the server, never leave the job RUNNING
            err.print("interrupted: cancelling the job...")
            with ctx.db.session() as s:
                job_app.cancel_job(s, job.id)
            worker.join(60)
            with ctx.db.session() as s:
                final = job_db.get_job(s, job.id)
        worker.join()
        report(ctx, final, out)
    except MediaLabError as exc:
        fail(exc)
    finally:
        ctx.close()


def submit(template: str,
           input: Annotated[Path | None, typer.Option("--input", "-i")] = None,
           set_: Annotated[list[str], typer.Option("--set", "-s")] = [],  # noqa: B006
           version: int | None = None, priority: int = 0,
           watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
           out: Annotated[Path | None, typer.Option(help="Folder for copies of the outputs.")] = None) -> None:
    """Queue a job for the running server (medialab serve) to dispatch."""
    ctx = context()
    try:
        values = job_params(ctx, template, version, input, set_)
        with ctx.db.session() as s:
            job = job_app.submit_job(s, None, template, values, version, priority=priority)
        console.print(f"queued job [bold]{job.id}[/bold]")
        if watch:
            report(ctx, follow(ctx, job.id), out)
    except MediaLabError as exc:
        fail(exc)


@jobs_app.command("list")
def jobs_list(state: JobState | None = None, template: str | None = None, limit: int = 20) -> None:
    ctx = context()
    with ctx.db.session() as s:
        rows = job_db.list_jobs(s, state, template, limit)
    table = Table("id", "template", "state", "progress", "created", "error")
    for j in rows:
        table.add_row(j.id, f"{j.template}@v{j.version}", f"[{STATE_STYLE[j.state]}]{j.state.value}[/]",
                      f"{j.progress:.0%}", j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      ((j.error or {}).get("message") or "")[:60])
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    with session() as s:
        job = job_db.get_job(s, job_id)
        data = {"job": job.model_dump(mode="json"),
                "attempts": [a.model_dump(mode="json") for a in attempt_db.job_attempts(s, job_id)],
                "outputs": [a.model_dump(mode="json") for a in artifact_db.job_outputs(s, job_id)],
                "events": [e.model_dump(mode="json") for e in job_db.events_after(s, job_id) if e.kind != "progress"]}
    console.print_json(json.dumps(data))


@jobs_app.command("watch")
def jobs_watch(job_id: str) -> None:
    ctx = context()
    try:
        report(ctx, follow(ctx, job_id))
    except MediaLabError as exc:
        fail(exc)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    with session() as s:
        job = job_app.cancel_job(s, job_id)
    how = "its trainer stops sd-scripts' process group" if job.kind == "training" else \
        "the running prompt is interrupted by its id"
    note = f" (cancel requested; {how})" if job.state == JobState.RUNNING else ""
    console.print(f"job {job.id} {job.state.value}{note}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(submit)
    app.add_typer(jobs_app, name="jobs")
