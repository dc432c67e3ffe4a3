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

from orchestrator.api.routes.jobs import job_out, jobs_out
from orchestrator.app import admission
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import configured_servers
from orchestrator.cli.common import (
    STATE_STYLE,
    JsonOption,
    console,
    context,
    err,
    fail,
    follow,
    follow_remote,
    job_params,
    parse_sets,
    print_json,
    report,
    report_remote,
    session,
)
from orchestrator.cli.remote import Remote, nothing_dispatches
from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, MediaLabError, Unavailable
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.settings import get_settings

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
           input: Annotated[Path | None, typer.Option("--input", "-i", help="Local file for the image/video "
                                                       "input; uploaded first.")] = None,
           set_: Annotated[list[str], typer.Option("--set", "-s", help="name=value parameter.")] = [],  # noqa: B006
           version: int | None = None, priority: int = 0,
           watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
           out: Annotated[Path | None, typer.Option(help="Folder to download the outputs into.")] = None,
           profile: Annotated[str | None, typer.Option(help="Profile of ~/.config/medialab/config.toml; "
                                                       "default: MEDIALAB_PROFILE.")] = None,
           idempotency_key: Annotated[str | None, typer.Option(help="The same key and request give the same "
                                                               "job (a retried submit never queues twice).")] = None,
           ) -> None:
    """Queue a job on a running service (medialab serve, MEDIALAB_URL) over its API and follow it."""
    values = parse_sets(set_)
    try:
        with Remote.connect(get_settings(), profile) as remote:
            if input is not None:
                if not input.is_file():
                    raise InvalidInput(f"--input {input}: no such file")
                manifest = remote.template(template, version).manifest or {}
                kinds = {t.value for t in tpl.ARTIFACT_TYPES}
                target = next((p for p in manifest.get("parameters", []) if p.get("type") in kinds), None)
                if target is None:
                    raise InvalidInput(f"template '{template}' takes no image or video input")
                values[target["name"]] = remote.upload(input).id
            job = remote.submit(template, values, version, priority, idempotency_key=idempotency_key)
            console.print(f"queued job [bold]{job.id}[/bold] on {remote.url}")
            why = None if job.state.terminal else nothing_dispatches(remote)  # terminal: an idempotent replay
            if why is not None:
                fail(f"{why}: job {job.id} stays QUEUED until something dispatches it")
            if watch:
                try:
                    follow_remote(remote.events(job.id), job.id)
                except KeyboardInterrupt:  # the job is the service's: it goes on without this process
                    err.print(f"stopped following: job {job.id} keeps going on {remote.url}")
                    raise typer.Exit(130) from None
                report_remote(remote, remote.job(job.id), out)
    except MediaLabError as exc:
        fail(exc)


@jobs_app.command("list")
def jobs_list(state: JobState | None = None, template: str | None = None, limit: int = 20,
              as_json: JsonOption = False) -> None:
    ctx = context()
    with ctx.db.session() as s:
        rows = job_db.list_jobs(s, state, template, limit)
        shown = jobs_out(s, rows)
    if as_json:  # as GET /v1/jobs
        print_json(shown)
        return
    table = Table("id", "template", "state", "progress", "created", "error")
    for j in rows:
        table.add_row(j.id, f"{j.template}@v{j.version}", f"[{STATE_STYLE[j.state]}]{j.state.value}[/]",
                      f"{j.progress:.0%}", j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      ((j.error or {}).get("message") or "")[:60])
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job's id or a unique prefix of it (4+ characters).")],
              as_json: JsonOption = False) -> None:
    """The job, its attempts, outputs and events (``--json``: the job as GET /v1/jobs/{id} gives it)."""
    with session() as s:
        job = job_db.get_job(s, job_id)
        job_id = job.id  # the full id (a prefix was given, maybe)
        if as_json:
            print_json(job_out(s, job))
            return
        attempts = attempt_db.job_attempts(s, job_id)
        data = {"job": job.model_dump(mode="json"),
                "cost": attempt_db.job_costs(s, [job_id]).get(job_id, 0.0),  # every attempt's: tier, cost, remote_id
                "attempts": [a.model_dump(mode="json") for a in attempts],
                "outputs": [a.model_dump(mode="json") for a in artifact_db.job_outputs(s, job_id)],
                "events": [e.model_dump(mode="json") for e in job_db.events_after(s, job_id) if e.kind != "progress"]}
    console.print_json(json.dumps(data))


@jobs_app.command("watch")
def jobs_watch(job_id: Annotated[str, typer.Argument(help="The job's id or a unique prefix of it.")]) -> None:
    ctx = context()
    try:
        report(ctx, follow(ctx, job_id))
    except MediaLabError as exc:
        fail(exc)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The job's id or a unique prefix of it.")]) -> None:
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
