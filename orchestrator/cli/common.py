"""What every command group of ``medialab`` shares: the consoles, the composition root for one command,
error exits, ``--set``/``--input`` parsing, and following a job to its end and printing its outputs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlmodel import Session

from orchestrator.api.schemas import EventOut, JobOut
from orchestrator.app import artifacts as artifact_app
from orchestrator.bootstrap import Context
from orchestrator.core import progress as progress_rule
from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.tables import Job
from orchestrator.settings import get_settings

if TYPE_CHECKING:
    from orchestrator.cli.remote import Remote

PIPED_WIDTH = 100_000
"""The width when the output is no terminal (piped, redirected, captured): rich would cut tables to 80 columns
(or the terminal's) and so lose ids and values; a table only takes the width its cells need."""


class _Console(Console):
    """A rich Console as wide as its content when not writing to a terminal (``COLUMNS`` still wins)."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in self._environ:
            return ConsoleDimensions(PIPED_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = _Console()
err = _Console(stderr=True)
STATE_STYLE = {"QUEUED": "yellow", "RUNNING": "cyan", "SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "magenta"}


def context() -> Context:
    """The composition root for one command (database, store, executor; the pool once started)."""
    try:
        return Context(get_settings())
    except MediaLabError as exc:
        fail(exc)


def fail(exc: MediaLabError | str) -> NoReturn:
    """Print the error and end the command with exit status 1."""
    err.print(f"[red]error:[/red] {exc.message if isinstance(exc, MediaLabError) else exc}")
    raise typer.Exit(1)


@contextmanager
def session() -> Iterator[Session]:
    """A database session for one command; a MediaLabError inside ends the command with its message."""
    ctx = context()
    try:
        with ctx.db.session() as s:
            yield s
    except MediaLabError as exc:
        fail(exc)


JsonOption = Annotated[bool, typer.Option("--json", help="Print the data as JSON (the API's shapes) instead of a "
                                                       "table.")]
"""The ``--json`` flag every list and show command takes; the command then calls ``print_json``."""


def print_json(data: Any) -> None:
    """``data`` (API schema models, table rows, lists and dicts of them, datetimes) as indented JSON on stdout:
    plain text, no markup or highlighting, so ``| jq`` reads it."""
    typer.echo(json.dumps(to_jsonable_python(data), indent=2))


def utc(at: datetime | None) -> str:
    """A time as the tables print it: UTC, to the second; empty for None."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else ""


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``name=value`` pairs; values are JSON when they parse as JSON (numbers, true/false), else text."""
    values: dict[str, Any] = {}
    for item in sets:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            fail(f"--set {item!r}: expected name=value")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def job_params(ctx: Context, template: str, version: int | None, input: Path | None, sets: list[str]) -> dict[str, Any]:
    """The ``--set`` values, plus ``--input`` stored and passed as the template's first image/video input."""
    values = parse_sets(sets)
    if input is None:
        return values
    with ctx.db.session() as s:
        _row, t = template_db.get_template(s, template, version)
        target = next((p for p in t.manifest.parameters if p.type in tpl.ARTIFACT_TYPES), None)
        if target is None:
            raise InvalidInput(f"{t.ref} takes no image or video input")
        if not input.is_file():
            raise InvalidInput(f"--input {input}: no such file")
        values[target.name] = artifact_app.store_input(s, ctx.store, input, input.name, settings=ctx.settings).id
    return values


def progress_line(reason: str, data: dict[str, Any]) -> str:
    """A progress event's line in the live display: frames done/total and the ETA when its data has them
    ("Upscale: frame 12/48, ETA 8 s"), else the event's own reason."""
    title = data.get("title")
    if not title or ("frames_total" not in data and data.get("eta_s") is None):
        return reason
    return progress_rule.describe(title, progress_rule.NodeProgress(
        data.get("value", 0), data.get("max", 0), data.get("frames_done"), data.get("frames_total"),
        data.get("eta_s")))


def follow(ctx: Context, job_id: str, poll_s: float = 0.2) -> Job:
    """Show the job's events with a live progress bar until it ends (``job_id``: its id or a unique prefix)."""
    with ctx.db.session() as s:
        job_id = job_db.get_job(s, job_id).id  # events are read by the full id
    after = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id[:8]} QUEUED", total=1.0)
        while True:
            with ctx.db.session() as s:
                events = job_db.events_after(s, job_id, after)
                job = job_db.get_job(s, job_id)
            for e in events:
                after = e.id
                if e.kind == "progress" and e.data:
                    bar.update(task, completed=e.data.get("fraction", 0.0), description=progress_line(e.reason, e.data))
                elif e.kind == "state":
                    bar.console.print(f"[{STATE_STYLE.get(e.state, '')}]{e.state}[/] {e.reason}")
                    bar.update(task, description=f"job {job_id[:8]} {e.state}")
                else:
                    bar.console.print(f"[dim]{e.reason}[/dim]")
            if job.state.terminal and not events:
                if job.state == JobState.SUCCEEDED:
                    bar.update(task, completed=1.0)
                return job
            time.sleep(poll_s)


def report(ctx: Context, job: Job, out: Path | None = None) -> None:
    """Print the outputs; with ``out``, also copy each one there under its own file name."""
    with ctx.db.session() as s:
        outputs = artifact_db.job_outputs(s, job.id)
    if job.state != JobState.SUCCEEDED:
        msg = (job.error or {}).get("message", "")
        err.print(f"[red]job {job.id} {job.state.value}[/red] {msg}")
        raise typer.Exit(1)
    for art in outputs:
        size = f"{art.width}x{art.height} " if art.width else ""
        console.print(f"[green]{art.output_name}[/green] {size}{art.content_type} artifact {art.id}")
        where = ctx.store.local_path(art.key) or f"s3://{ctx.store.bucket}/{art.key}"
        console.print(f"  stored: {where}", soft_wrap=True)
        if out:
            dest = out / job.id[:8] / art.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            with ctx.store.open(art.key) as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            console.print(f"  copy:   {dest.resolve()}", soft_wrap=True)


def follow_remote(events: Iterable[EventOut], job_id: str) -> None:
    """``follow`` for a job of a remote service: the same live display, fed by its event stream (which
    ends after the final state)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id[:8]} QUEUED", total=1.0)
        for e in events:
            state = e.state.value if e.state else ""
            if e.kind == "progress" and e.data:
                bar.update(task, completed=e.data.get("fraction", 0.0), description=progress_line(e.reason, e.data))
            elif e.kind == "state":
                bar.console.print(f"[{STATE_STYLE.get(state, '')}]{state}[/] {e.reason}")
                bar.update(task, description=f"job {job_id[:8]} {state}")
                if state == JobState.SUCCEEDED.value:
                    bar.update(task, completed=1.0)
            else:
                bar.console.print(f"[dim]{e.reason}[/dim]")


def report_remote(remote: Remote, job: JobOut, out: Path | None = None) -> None:
    """``report`` for a job of a remote service: its outputs, downloaded into ``out/<job id[:8]>/`` when
    ``out`` is given; exit status 1 when the job did not succeed."""
    if job.state != JobState.SUCCEEDED:
        msg = (job.error or {}).get("message", "")
        err.print(f"[red]job {job.id} {job.state.value}[/red] {msg}")
        raise typer.Exit(1)
    for art in job.outputs:
        size = f"{art.width}x{art.height} " if art.width else ""
        console.print(f"[green]{art.output_name}[/green] {size}{art.content_type} artifact {art.id}")
        if out:
            dest = remote.download(art.id, out / job.id[:8] / Path(art.filename).name)
            console.print(f"  copy:   {dest.resolve()}", soft_wrap=True)
