"""The ``medialab`` command: serve the API, run and watch jobs, manage keys and templates."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import Session

from orchestrator.app import admission
from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import keys as key_app
from orchestrator.app import servers as server_app
from orchestrator.app import templates as template_app
from orchestrator.bootstrap import Context, configured_servers
from orchestrator.comfy.client import ComfyClient
from orchestrator.core import keys
from orchestrator.core import requirements as reqs
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import InvalidInput, MediaLabError, Unavailable
from orchestrator.core.lock import LockReport, check_server
from orchestrator.core.placement import place
from orchestrator.core.server_urls import redact
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import audit
from orchestrator.db import jobs as job_db
from orchestrator.db import keys as key_db
from orchestrator.db import servers as server_db
from orchestrator.db import templates as template_db
from orchestrator.db.tables import ApiKey, Job, ServerRow, now
from orchestrator.runtime.pool import probe
from orchestrator.runtime.worker_lock import DEFAULT_LOCK, load_lock
from orchestrator.settings import get_settings
from orchestrator.training.db.leases import leased_gpus

app = typer.Typer(help="Media Lab: versioned ComfyUI templates run on ComfyUI servers.", no_args_is_help=True)
jobs_app = typer.Typer(help="List, show, watch and cancel jobs.", no_args_is_help=True)
templates_app = typer.Typer(help="The template library.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
servers_app = typer.Typer(help="The pool of ComfyUI servers.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(templates_app, name="templates")
app.add_typer(keys_app, name="keys")
app.add_typer(servers_app, name="servers")

console = Console()
err = Console(stderr=True)
STATE_STYLE = {"QUEUED": "yellow", "RUNNING": "cyan", "SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "magenta"}


def context() -> Context:
    try:
        return Context(get_settings())
    except MediaLabError as exc:
        fail(exc)


def fail(exc: MediaLabError | str) -> typer.Exit:
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


def follow(ctx: Context, job_id: str, poll_s: float = 0.2) -> Job:
    """Show the job's events with a live progress bar until it ends."""
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
                    bar.update(task, completed=e.data.get("fraction", 0.0), description=f"{e.reason}")
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


# -- commands ---------------------------------------------------------------------------------------
@app.command()
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


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, dispatch: bool = True) -> None:
    """Serve the API under /v1 (and dispatch jobs, starting a local ComfyUI if no pool is configured)."""
    import uvicorn

    from orchestrator.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    uvicorn.run(create_app(dispatch=dispatch), host=host, port=port)


@app.command()
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
        ctx.start_dispatcher(dispatch=False, recover=False)  # renews this job's lease while it runs
        with ctx.db.session() as s:
            job = job_app.submit_job(s, pool, template, values, version)
            _row, t = template_db.get_template(s, template, version)
            views = pool.views(attempt_db.inflight_by_server(s))
            leased = leased_gpus(s, ctx.settings.trainer_lease_s)
            for v in views:
                v.gpu_leased = v.url in leased  # a trainer holds that GPU: no inference there meanwhile
            view = place(reqs.requirements(t, job.params), views, max_inflight=1_000_000,  # run now: ComfyUI
                         lock=load_lock() if ctx.settings.require_lock else None)  # queues it behind other work
            if view is None:
                raise Unavailable(f"no healthy server can run job {job.id} now; it stays QUEUED for a running "
                                  "'medialab serve'")
            attempt = attempt_db.start_attempt(s, job, view.url, ctx.owner, ctx.settings.lease_s,
                                            reason="dispatched by medialab run")
            s.commit()
        server = pool.get(view.url)
        worker = threading.Thread(target=ctx.executor.execute, args=(attempt.id, server), daemon=True)
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


@app.command()
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


@templates_app.command("list")
def templates_list() -> None:
    ctx = context()
    table = Table("name", "version", "kind", "title", "hash", "source")
    with ctx.db.session() as s:
        for row in template_db.template_rows(s):
            table.add_row(row.name, f"v{row.version}" + (" (deprecated)" if row.deprecated else ""), row.kind,
                          row.title, row.content_hash[:12], row.source)
    console.print(table)


@templates_app.command("show")
def templates_show(name: str, version: int | None = None) -> None:
    with session() as s:
        _row, t = template_db.get_template(s, name, version)
    console.print(f"[bold]{t.ref}[/bold] {t.manifest.title} ({t.manifest.kind}) hash {t.content_hash[:12]}")
    console.print(t.manifest.description)
    table = Table("parameter", "type", "default", "range/choices", "binds to", "help")
    for p in t.manifest.parameters:
        rng = (", ".join(map(str, p.choices)) if p.choices else
               f"{p.min}..{p.max}" if p.min is not None or p.max is not None else p.folder or "")
        table.add_row(p.name, p.type.value, "" if p.required else "(optional)" if p.optional else str(p.default), rng,
                      f"{p.bind.node}.{p.bind.input}", p.help)
    console.print(table)


@templates_app.command("publish")
def templates_publish(
    name: str,
    graph: Annotated[Path, typer.Argument(help="The workflow as ComfyUI saves it (Workflow > Save), or its API "
                                          "format (Workflow > Export (API)).")],
    manifest: Annotated[Path | None, typer.Option(help="Manifest; default: read from the parameter nodes.")] = None,
    title: str | None = None, kind: str = "image", description: str = "",
) -> None:
    """Publish the next version of a template, converted and checked with a live ComfyUI server of the pool."""
    ctx = context()
    try:
        try:
            graph_data = json.loads(graph.read_text())
            manifest_data = json.loads(manifest.read_text()) if manifest else None
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot read {exc}") from exc
        with console.status("checking against a ComfyUI server..."):
            pool = ctx.start_pool()
            with ctx.db.session() as s:
                row = template_app.publish_template(s, pool, name, graph_data, manifest_data, title=title, kind=kind,
                                               description=description)
    except MediaLabError as exc:
        fail(exc)
    finally:
        ctx.close()
    console.print(f"published [bold]{row.name}@v{row.version}[/bold] hash {row.content_hash[:12]}")
    templates_show(row.name, row.version)


@templates_app.command("open")
def templates_open(
    name: str,
    version: Annotated[int | None, typer.Option(help="Default: the newest version.")] = None,
    out: Annotated[Path | None, typer.Option(help="Default: <name>-v<N>.workflow.json here.")] = None,
    server: Annotated[str | None, typer.Option(help="The pool server (name, id or URL) to open it on; "
                                                    "default: any healthy one.")] = None,
) -> None:
    """Write a version as an editor-format workflow to open in ComfyUI (Workflow > Open), edit and publish again."""
    ctx = context()
    try:
        if server:
            with ctx.db.session() as s:
                row = server_db.get_server(s, server)
            client = ComfyClient(row.url, timeout=30)
            try:
                object_info, urls = client.object_info(), [redact(row.url)]
            finally:
                client.close()
        else:
            with console.status("reading node definitions from a ComfyUI server..."):
                pool = ctx.start_pool()
                object_info = pool.object_info()
            urls = [redact(srv.url) for srv in pool.servers if srv.healthy and srv.active and srv.name != "local"]
        with ctx.db.session() as s:
            workflow = template_app.template_workflow(s, name, version, object_info)
        meta = workflow["extra"]["medialab"]
        path = out or Path(f"{meta['template']}-v{meta['version']}.workflow.json")
        path.write_text(json.dumps(workflow, indent=1) + "\n")
    except OSError as exc:
        fail(f"cannot write {exc}")
    except MediaLabError as exc:
        fail(exc)
    finally:
        ctx.close()
    console.print(f"wrote {meta['template']}@v{meta['version']} to [bold]{path}[/bold] "
                  f"({len(workflow['nodes'])} nodes)")
    for item in meta.get("dropped_inputs", []):
        err.print(f"[yellow]warning:[/yellow] input {item} is unknown to the server's node definitions; left out")
    where = " or ".join(urls) if urls else "ComfyUI (no pool server is registered: start one)"
    console.print(f"open {where} in a browser, then Workflow > Open and pick {path.resolve()} (or drop the file "
                  f"onto the canvas); after editing, Workflow > Save and publish the saved file with "
                  f"`medialab templates publish {meta['template']} FILE`")


@templates_app.command("deprecate")
def templates_deprecate(name: str, version: int, undo: bool = False) -> None:
    """Jobs that name no version stop taking this one (--undo brings it back)."""
    with session() as s:
        row = template_app.set_deprecated(s, name, version, not undo)
    console.print(f"{row.name}@v{row.version} {'deprecated' if row.deprecated else 'current again'}")


@templates_app.command("diff")
def templates_diff(name: str, a: int, b: int) -> None:
    """Parameters and nodes added, removed and changed from version A to version B."""
    with session() as s:
        _ra, ta = template_db.get_template(s, name, a)
        _rb, tb = template_db.get_template(s, name, b)
    console.print_json(json.dumps(tpl.diff(ta, tb)))


EXPIRES_HELP = "Expiry: 30d, 12h, 90m, 2w, an ISO date or date-time (UTC), or never."


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else ""


def _key_json(row: ApiKey) -> dict[str, Any]:
    """A key for printing: never its hash."""
    return {"id": row.id, "name": row.name, "roles": row.roles, "state": keys.key_state(row, now()),
            "created_at": row.created_at.isoformat(), "created_by": row.created_by,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}


@keys_app.command("create")
def keys_create(role: Annotated[list[str], typer.Option("--role", "-r", help="admin, run, publish, export, train")],
                name: str = "cli",
                expires: Annotated[str | None, typer.Option(help=EXPIRES_HELP)] = None) -> None:
    """Create an API key with the given roles; the key is printed once."""
    with session() as s:
        row, plain = key_app.create_key(s, name, role, expires, max_name_length=get_settings().max_name_length)
    until = f" expires {_when(row.expires_at)} UTC" if row.expires_at else ""
    console.print(f"key '{row.name}' ({row.id}) roles {','.join(row.roles)}{until}: [bold]{plain}[/bold]",
                  soft_wrap=True)


@keys_app.command("list")
def keys_list(all_: Annotated[bool, typer.Option("--all", help="Also revoked keys.")] = False,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key with its roles, state, expiry and last use (never a secret nor a hash)."""
    with session() as s:
        rows = key_db.list_keys(s, include_revoked=all_)
    if as_json:
        console.print_json(json.dumps([_key_json(r) for r in rows]))
        return
    table = Table("id", "name", "roles", "state", "created", "expires", "last used", "revoked")
    for r in rows:
        table.add_row(r.id, r.name, ",".join(r.roles), keys.key_state(r, now()), _when(r.created_at),
                      _when(r.expires_at) or "never", _when(r.last_used_at) or "never", _when(r.revoked_at))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke a key now (the last admin key cannot be revoked)."""
    with session() as s:
        row = key_app.revoke_key(s, key)
    console.print(f"key '{row.name}' ({row.id}) revoked")


@keys_app.command("rotate")
def keys_rotate(key: Annotated[str, typer.Argument(help="The key's id or name.")],
                grace: Annotated[str | None, typer.Option(help="Keep the old key usable this long (e.g. 1h, at "
                                                               "most 7d); default: revoked at once.")] = None,
                expires: Annotated[str | None, typer.Option(help=EXPIRES_HELP + " Default: the old key's.")] = None,
                ) -> None:
    """A new secret for a key: same name, roles and expiry; the old one is revoked (after --grace)."""
    with session() as s:
        new, plain, old = key_app.rotate_key(s, key, grace, keys.KEEP if expires is None else expires)
    when = "now" if old.revoked_at and old.revoked_at <= now() else f"at {_when(old.revoked_at)} UTC"
    console.print(f"key '{old.name}' ({old.id}) revoked {when}; new key ({new.id}) roles {','.join(new.roles)}: "
                  f"[bold]{plain}[/bold]", soft_wrap=True)


@app.command("audit")
def audit_list(action: Annotated[str | None, typer.Option(help="e.g. job.cancel, or job for every job.*")] = None,
               key: Annotated[str | None, typer.Option(help="A key id or name; @cli: this CLI.")] = None,
               target: Annotated[str | None, typer.Option(help="The id or name acted on.")] = None,
               since: Annotated[str | None, typer.Option(help="ISO date-time, or back from now: 1h, 7d.")] = None,
               limit: int = 50, offset: int = 0,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The audit trail, newest first: which key did what."""
    with session() as s:
        rows = audit.query(s, action=action, key=key, target=target, since=keys.parse_since(since, now()),
                           limit=limit, offset=offset)
    if as_json:
        console.print_json(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    table = Table("at", "key", "action", "target", "data")
    for r in rows:
        who = f"{r.key_name} ({r.api_key_id[:8]})" if r.api_key_id else audit.CLI
        table.add_row(_when(r.at), who, r.action, escape(r.target), escape(json.dumps(r.data)) if r.data else "")
    console.print(table)


# -- servers ----------------------------------------------------------------------------------------
def probe_and_record(ctx: Context, row: ServerRow) -> str | None:
    """Probe one server now and record the result; returns the error, if any."""
    client = ComfyClient(row.url, timeout=10)
    try:
        caps = probe(client)
    except MediaLabError as exc:
        with ctx.db.session() as s:
            server_db.record_health(s, row.id, False, exc.message)
        return exc.message
    finally:
        client.close()
    with ctx.db.session() as s:
        server_db.record_probe(s, row.id, caps)
    return None


def _ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = (datetime.now(UTC) - when.replace(tzinfo=when.tzinfo or UTC)).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


@servers_app.command("list")
def servers_list(refresh: Annotated[bool, typer.Option(help="Probe every server now first.")] = False) -> None:
    """Each server's health, version, node packs, models and current job."""
    ctx = context()
    with ctx.db.session() as s:
        rows = server_db.server_rows(s)
    if refresh:
        for row in rows:
            probe_and_record(ctx, row)
    with ctx.db.session() as s:
        rows, jobs = server_db.server_rows(s), attempt_db.current_jobs(s)
    if not rows:
        console.print("no servers registered: `medialab run` and `medialab serve` start a local ComfyUI worker; "
                      "`medialab servers add URL` registers one")
        return
    table = Table("name", "url", "state", "health", "ComfyUI", "device", "node packs", "models", "current job",
                  show_lines=True)
    for row in rows:
        caps = Capabilities.from_json(row.capabilities)
        health = ("[green]healthy[/]" if row.healthy else f"[red]down[/] {redact(row.last_error or '')}"[:80]) + \
            f"\nseen {_ago(row.last_seen)}"
        device = ""
        if caps and caps.device:
            device = f"{caps.device}\n{(caps.vram_free or 0) / 2**30:.1f}/{(caps.vram_total or 0) / 2**30:.1f} GiB"
        models = "\n".join(f"{f}: {', '.join(sorted(v)[:4])}{' ...' if len(v) > 4 else ''}"
                           for f, v in sorted(caps.models.items()) if v) if caps else "(not probed)"
        packs = "\n".join(caps.packs) if caps and caps.packs else ("core only" if caps else "")
        table.add_row(row.name, redact(row.url), row.state, health, caps.comfy_version if caps else "", device, packs,
                      models or "none", "\n".join(jobs.get(row.url, [])) or "idle")
    console.print(table)


def _report_cells(report: LockReport) -> tuple[str, str, str, str]:
    missing = [f"pack {p}" for p in report.missing_packs]
    missing += [f"{pack} nodes: {', '.join(nodes[:6])}{' ...' if len(nodes) > 6 else ''}"
                for pack, nodes in report.missing_nodes.items()]
    missing += report.missing_models + [f"pip {p}" for p in report.missing_python]
    return ("\n".join(missing) or "[green]nothing[/]", "\n".join(report.mismatches) or "[green]none[/]",
            "\n".join(report.unverified), "\n".join(report.extra))


@servers_app.command("check")
def servers_check(
    server: Annotated[str | None, typer.Argument(help="Name, id or URL; default: all.")] = None,
    lock_file: Annotated[Path, typer.Option("--lock", help="The worker lock.")] = DEFAULT_LOCK,
    refresh: Annotated[bool, typer.Option(help="Probe the servers now (else: their recorded capabilities).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """What each server lacks or does differently from the worker lock; exit status 1 when anything does."""
    ctx = context()
    try:
        lock = load_lock(lock_file)
        with ctx.db.session() as s:
            rows = [server_db.get_server(s, server)] if server else server_db.server_rows(s)
    except MediaLabError as exc:
        fail(exc)
    if not rows:
        console.print("no servers registered: `medialab servers add URL` registers one")
        return
    errors = {row.id: probe_and_record(ctx, row) for row in rows} if refresh else {}
    with ctx.db.session() as s:
        rows = [server_db.get_server(s, row.id) for row in rows]
    reports = {row.id: check_server(Capabilities.from_json(row.capabilities), lock) for row in rows}
    if as_json:
        console.print_json(json.dumps([{"name": r.name, "url": redact(r.url), "healthy": r.healthy,
                                        "probe_error": redact(errors.get(r.id) or "") or None,
                                        **reports[r.id].to_json()} for r in rows]))
    else:
        table = Table(title=f"worker lock {lock_file} (ComfyUI {lock.comfyui.version})", show_lines=True)
        for column in ("server", "ComfyUI", "missing (packs, nodes, models, pip)", f"differs from {lock_file.name}",
                       "cannot verify", "not in the lock"):
            table.add_column(column, overflow="fold")
        for row in rows:
            report = reports[row.id]
            name = f"{row.name}\n{redact(row.url)}\n" + ("[green]matches[/]" if report.ok else "[red]does not match[/]")
            if errors.get(row.id):
                name += f"\n[red]down[/] {redact(errors[row.id] or '')}"[:120] + "\n(recorded capabilities)"
            table.add_row(name, report.comfy_version or "?", *_report_cells(report))
        console.print(table)
        bad = [row.name for row in rows if not reports[row.id].ok]
        console.print(f"{len(rows) - len(bad)} of {len(rows)} server(s) match the lock"
                      + (f"; not: {', '.join(bad)}" if bad else ""))
    if any(not r.ok for r in reports.values()):
        raise typer.Exit(1)


@servers_app.command("add")
def servers_add(url: str, name: str | None = None) -> None:
    """Register a server (probed now; a server that is down is added and retried by the pool)."""
    ctx = context()
    try:
        with ctx.db.session() as s:
            row = server_app.register_server(s, url, name, settings=ctx.settings)
    except MediaLabError as exc:
        fail(exc)
    error = probe_and_record(ctx, row)
    console.print(f"server {row.name} ({redact(row.url)}) added"
                  + (f"; [red]not reachable now[/]: {redact(error)}" if error else ""))


@servers_app.command("drain")
def servers_drain(server: str) -> None:
    """No new jobs go to the server; the ones on it finish."""
    with session() as s:
        row = server_app.set_server_state(s, server, "draining")
        busy = attempt_db.current_jobs(s).get(row.url, [])
    console.print(f"server {row.name} draining; {len(busy)} job(s) still on it")


@servers_app.command("activate")
def servers_activate(server: str) -> None:
    """Take a drained server back into the pool."""
    with session() as s:
        row = server_app.set_server_state(s, server, "active")
    console.print(f"server {row.name} active")


@servers_app.command("remove")
def servers_remove(server: str) -> None:
    with session() as s:
        row = server_app.remove_server(s, server)
    console.print(f"server {row.name} removed")


@servers_app.command("refresh")
def servers_refresh(
    server: Annotated[str | None, typer.Argument(help="Name, id or URL; default: all.")] = None,
) -> None:
    """Probe health and capabilities (node classes, models, VRAM, version) now."""
    ctx = context()
    try:
        with ctx.db.session() as s:
            rows = [server_db.get_server(s, server)] if server else server_db.server_rows(s)
    except MediaLabError as exc:
        fail(exc)
    for row in rows:
        error = probe_and_record(ctx, row)
        with ctx.db.session() as s:
            audit.record(s, "server.refresh", row.name, {"id": row.id, "healthy": error is None})
            s.commit()
        console.print(f"{row.name}: " + (f"[red]down[/] {error}" if error else "[green]healthy[/], capabilities read"))


from orchestrator.cli import training as _training  # noqa: E402  (its commands use the helpers above)

_training.register(app)
