"""``medialab pipelines``: the pipeline library (list, show, check a file, publish a file), and runs on a
service over HTTP (run, runs, show-run, cancel-run, resume-run), as ``medialab batch`` does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.api.routes.pipelines import version_out
from orchestrator.app import pipelines as pipeline_app
from orchestrator.cli.batch import parse_value
from orchestrator.cli.common import STATE_STYLE, JsonOption, console, context, err, fail, print_json, session
from orchestrator.cli.remote import Remote
from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.db import pipelines as pipeline_db
from orchestrator.settings import get_settings

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


# -- runs, over HTTP ------------------------------------------------------------------------------------
ProfileOption = Annotated[str | None, typer.Option(help="Profile of ~/.config/medialab/config.toml; default: "
                                                   "MEDIALAB_PROFILE.")]
RUN_STYLE = {"WAITING": "dim", "REUSED": "green", **STATE_STYLE}
POLL_S = 1.0


def parse_run_inputs(remote: Remote, specs: list[str]) -> dict[str, Any]:
    """``name=FILE|ARTIFACT|VALUE``: an existing file is uploaded (its artifact id given), else the value as
    ``--set`` reads it (an artifact id stays text)."""
    inputs: dict[str, Any] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--input {spec!r}: expected name=FILE, name=ARTIFACT or name=VALUE",
                               param="--input")
        path = Path(raw).expanduser()
        inputs[name] = remote.upload(path).id if path.is_file() else parse_value(raw)
    return inputs


def parse_step_sets(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``step.param=value`` overrides, as the run's ``params``."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        step, dot, param = key.partition(".")
        if not sep or not dot or not step or not param:
            raise InvalidInput(f"--set {spec!r}: expected step.param=value", param="--set")
        out.setdefault(step, {})[param] = parse_value(raw)
    return out


def print_run(run: dict[str, Any]) -> None:
    style = RUN_STYLE.get(run["state"], "white")
    console.print(f"run [bold]{run['id']}[/bold] {run['pipeline']}@v{run['version']} "
                  f"[{style}]{run['state']}[/{style}]" + ("" if run["reuse"] else " (reuse off)"))
    table = Table("step", "template", "state", "job", "outputs")
    for st in run["steps"]:
        s = RUN_STYLE.get(st["state"], "white")
        job = st["job_id"] or (f"reused {st['reused_from_job'][:8]}" if st["reused_from_job"] else "")
        outs = ", ".join(f"{k}={v}" for k, v in (st["outputs"] or {}).items())
        if st["error"]:
            outs = f"[red]{str(st['error'].get('message', ''))[:120]}[/red]"
        table.add_row(st["step"], f"{st['template']}@v{st['version']}", f"[{s}]{st['state']}[/{s}]", job[:16], outs)
    console.print(table)
    for name, art in (run["outputs"] or {}).items():
        console.print(f"[green]{name}[/green] artifact {art}")


def watch_run(remote: Remote, run: dict[str, Any]) -> dict[str, Any]:
    """Poll the run until it is final, printing each step's state change."""
    seen = {st["step"]: st["state"] for st in run["steps"]}
    while run["state"] == "RUNNING":
        time.sleep(POLL_S)
        run = remote.request("GET", f"/v1/pipeline-runs/{run['id']}").json()
        for st in run["steps"]:
            if seen.get(st["step"]) != st["state"]:
                seen[st["step"]] = st["state"]
                console.print(f"  {st['step']}: {st['state']}" + (f" (job {st['job_id'][:8]})" if st["job_id"] else ""))
    return run


def exit_for(run: dict[str, Any]) -> None:
    if run["state"] in ("FAILED", "CANCELLED"):
        raise typer.Exit(1)


@pipelines_app.command("run")
def run_cmd(
    name: str,
    input_: Annotated[list[str] | None, typer.Option("--input", "-i", help="name=FILE (uploaded), name=ARTIFACT "
                                                     "id or name=VALUE; once per pipeline input.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="step.param=value: override a step's "
                                                   "constant (JSON or text).")] = None,
    version: Annotated[int | None, typer.Option(help="Default: the newest version.")] = None,
    reuse: Annotated[bool, typer.Option(help="Reuse a step that already ran with the same template version, "
                                        "parameters and input content.")] = True,
    priority: int = 0,
    watch: Annotated[bool, typer.Option(help="Follow the run until it is final (exit 1 unless SUCCEEDED).")] = False,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
) -> None:
    """Start a pipeline run on the service (POST /v1/pipelines/{name}/runs)."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            body: dict[str, Any] = {"inputs": parse_run_inputs(remote, input_ or []),
                                    "params": parse_step_sets(set_ or []), "reuse": reuse, "priority": priority}
            if version is not None:
                body["version"] = version
            run = remote.request("POST", f"/v1/pipelines/{name}/runs", json=body).json()
            if watch:
                if not as_json:
                    print_run(run)
                run = watch_run(remote, run)
    except MediaLabError as exc:
        print_problems(exc)
    if as_json:
        print_json(run)
    else:
        print_run(run)
    if watch:
        exit_for(run)


@pipelines_app.command("runs")
def runs_cmd(pipeline: Annotated[str | None, typer.Option(help="Only this pipeline's runs.")] = None,
             state: Annotated[str | None, typer.Option(help="RUNNING, SUCCEEDED, FAILED or CANCELLED.")] = None,
             limit: int = 50, as_json: JsonOption = False, profile: ProfileOption = None) -> None:
    """Pipeline runs, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"pipeline": pipeline} if pipeline else {}),
                              **({"state": state} if state else {})}
    try:
        with Remote.connect(get_settings(), profile) as remote:
            runs = remote.request("GET", "/v1/pipeline-runs", params=params).json()
    except MediaLabError as exc:
        fail(exc)
    if as_json:
        print_json(runs)
        return
    table = Table("id", "pipeline", "state", "steps", "created")
    for r in runs:
        s = RUN_STYLE.get(r["state"], "white")
        table.add_row(r["id"][:12], f"{r['pipeline']}@v{r['version']}", f"[{s}]{r['state']}[/{s}]",
                      " -> ".join(f"{st['step']}:{st['state']}" for st in r["steps"]), r["created_at"][:19])
    console.print(table)


def _one(method: str, path: str, watch: bool, as_json: bool, profile: str | None) -> None:
    try:
        with Remote.connect(get_settings(), profile) as remote:
            run = remote.request(method, path).json()
            if watch:
                run = watch_run(remote, run)
    except MediaLabError as exc:
        fail(exc)
    if as_json:
        print_json(run)
    else:
        print_run(run)
    if watch:
        exit_for(run)


@pipelines_app.command("show-run")
def show_run_cmd(run_id: str, watch: bool = False, as_json: JsonOption = False,
                 profile: ProfileOption = None) -> None:
    """A run's steps (state, job, reused from, outputs) and outputs."""
    _one("GET", f"/v1/pipeline-runs/{run_id}", watch, as_json, profile)


@pipelines_app.command("cancel-run")
def cancel_run_cmd(run_id: str, as_json: JsonOption = False, profile: ProfileOption = None) -> None:
    """Cancel a run: waiting steps cancelled, the running step's job interrupted, nothing started after."""
    _one("POST", f"/v1/pipeline-runs/{run_id}/cancel", False, as_json, profile)


@pipelines_app.command("resume-run")
def resume_run_cmd(run_id: str, watch: bool = False, as_json: JsonOption = False,
                   profile: ProfileOption = None) -> None:
    """Run a FAILED or CANCELLED run again from its failed or cancelled steps (the succeeded ones kept)."""
    _one("POST", f"/v1/pipeline-runs/{run_id}/resume", watch, as_json, profile)


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines")
