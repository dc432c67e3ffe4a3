"""``medialab pipelines``: the pipeline library (list, show, check a file, publish a file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.api.routes.pipelines import version_out
from orchestrator.app import pipelines as pipeline_app
from orchestrator.cli.common import JsonOption, console, context, err, fail, print_json, session
from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.db import pipelines as pipeline_db

pipelines_app = typer.Typer(help="Pipelines: chains of template steps.", no_args_is_help=True)
FileArg = Annotated[Path, typer.Argument(help="A pipeline.json (name, version, description, inputs, steps, outputs).")]


def read_definition(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a pipeline definition is a JSON object")
    return data


def print_problems(exc: MediaLabError) -> None:
    """Every problem ``core.pipelines`` named, one a line (the message alone when there is no list)."""
    errors = exc.extra.get("errors")
    if not errors:
        fail(exc)
    err.print(f"[red]error:[/red] {len(errors)} problem{'s' if len(errors) > 1 else ''}:")
    for e in errors:
        err.print(f"  {e['param']}: {e['message']}")
    raise typer.Exit(1)


@pipelines_app.command("list")
def pipelines_list(as_json: JsonOption = False) -> None:
    """Every version of every pipeline (``--json``: each as the API's PipelineVersionOut)."""
    with session() as s:
        rows = pipeline_db.pipeline_rows(s)
        if as_json:
            print_json([version_out(row) for row in rows])
            return
        table = Table("name", "version", "steps", "inputs", "hash", "source")
        for row in rows:
            table.add_row(row.name, f"v{row.version}" + (" (deprecated)" if row.deprecated else ""),
                          " -> ".join(row.step_order), ", ".join(i["name"] for i in row.definition.get("inputs", [])),
                          row.content_hash[:12], row.source)
    console.print(table)


def show_checked(c: pl.CheckedPipeline) -> None:
    p = c.pipeline
    console.print(f"[bold]{p.ref}[/bold] hash {c.content_hash[:12]}")
    if p.description:
        console.print(p.description)
    inputs = Table("input", "type", "description")
    for i in p.inputs:
        inputs.add_row(i.name, i.type.value, i.description)
    console.print(inputs)
    by_id = {s.id: s for s in p.steps}
    steps = Table("step", "template", "params")
    for sid in c.order:
        s, pin = by_id[sid], c.templates[sid]
        steps.add_row(sid, f"{pin.template}@v{pin.version}",
                      ", ".join(f"{k}={json.dumps(v)}" for k, v in s.params.items()))
    console.print(steps)
    outputs = Table("output", "from")
    for o in p.outputs:
        outputs.add_row(o.name, f"{o.step}.{o.output}")
    console.print(outputs)


@pipelines_app.command("show")
def pipelines_show(name: str, version: int | None = None, as_json: JsonOption = False) -> None:
    """A version's inputs, steps in run order and outputs (``--json``: as GET
    /v1/pipelines/{name}/versions/{version})."""
    with session() as s:
        row = pipeline_db.get_pipeline(s, name, version)
        if as_json:
            print_json(version_out(row, full=True))
            return
        c = pipeline_db.checked_from_row(row)
    show_checked(c)


@pipelines_app.command("check")
def pipelines_check(file: FileArg) -> None:
    """Check a definition against the recorded templates without publishing it; every problem is named."""
    ctx = context()
    try:
        raw = read_definition(file)
        p = pl.parse({**raw, "name": raw.get("name") or "unnamed", "version": raw.get("version") or 1}, str(file))
        with ctx.db.session() as s:
            c = pipeline_app.check_pipeline(s, p)
    except MediaLabError as exc:
        print_problems(exc)
    finally:
        ctx.close()
    console.print(f"[green]ok:[/green] {file}: {len(c.pipeline.steps)} steps in order {' -> '.join(c.order)}, "
                  f"hash {c.content_hash[:12]}")


@pipelines_app.command("publish")
def pipelines_publish(
    file: FileArg,
    name: Annotated[str | None, typer.Option(help="Default: the name in the file.")] = None,
) -> None:
    """Publish a version (the file's version, or the next free one); the same content again is a no-op."""
    ctx = context()
    try:
        raw = read_definition(file)
        target = name or raw.get("name")
        if not isinstance(target, str):
            raise InvalidInput(f"{file} names no pipeline: give --name")
        with ctx.db.session() as s:
            row, created = pipeline_app.publish_pipeline(s, target, raw, settings=ctx.settings)
            c = pipeline_db.checked_from_row(row)
    except MediaLabError as exc:
        print_problems(exc)
    finally:
        ctx.close()
    console.print(f"{'published' if created else 'already published:'} [bold]{row.name}@v{row.version}[/bold] "
                  f"hash {row.content_hash[:12]}")
    show_checked(c)


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines")
