"""``medialab servers``: the pool of ComfyUI servers (list, check against the worker lock, add, set (tier, cost,
capacity), drain, activate, remove, refresh)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.api.routes.servers import server_out
from orchestrator.app import servers as server_app
from orchestrator.cli.common import JsonOption, console, context, fail, print_json, session
from orchestrator.core.burst import Tiering
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.core.lock import LockReport, check_server
from orchestrator.core.server_urls import redact
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.runtime.worker_lock import DEFAULT_LOCK, load_lock

servers_app = typer.Typer(help="The pool of ComfyUI servers.", no_args_is_help=True)


def _ago(when: datetime | None, at: datetime | None = None) -> str:
    """How long ago ``when`` was: 5s, 3m, 2h, 4d ago; ``never`` for None."""
    if when is None:
        return "never"
    seconds = max(0.0, ((at or datetime.now(UTC)) - when.replace(tzinfo=when.tzinfo or UTC)).total_seconds())
    for unit, size, upto in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < upto:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds / 86400:.0f}d ago"


@servers_app.command("list")
def servers_list(refresh: Annotated[bool, typer.Option(help="Probe every server now first.")] = False,
                 as_json: JsonOption = False) -> None:
    """Each server's health (and its last successful health check: the pool of `medialab serve` checks every
    server every few seconds), version, node packs, models and current job. ``--json``: as GET /v1/servers."""
    ctx = context()
    with ctx.db.session() as s:
        rows = server_db.server_rows(s)
    if refresh:
        for row in rows:
            server_app.probe_server(ctx.db, row)
    with ctx.db.session() as s:
        rows, jobs = server_db.server_rows(s), attempt_db.current_jobs(s)
    if as_json:
        print_json([server_out(r, jobs) for r in rows])
        return
    if not rows:
        console.print("no servers registered: `medialab run` and `medialab serve` start a local ComfyUI worker; "
                      "`medialab servers add URL` registers one")
        return
    table = Table("name", "url", "kind/tier", "state", "health", "ComfyUI", "device", "node packs", "models",
                  "current job", show_lines=True)
    for row in rows:
        caps = Capabilities.from_json(row.capabilities)
        health = ("[green]healthy[/]" if row.healthy else f"[red]down[/] {redact(row.last_error or '')}"[:80]) + \
            f"\nlast ok check {_ago(row.last_seen)}"
        device = ""
        if caps and caps.device:
            device = f"{caps.device}\n{(caps.vram_free or 0) / 2**30:.1f}/{(caps.vram_total or 0) / 2**30:.1f} GiB"
        models = "\n".join(f"{f}: {', '.join(sorted(v)[:4])}{' ...' if len(v) > 4 else ''}"
                           for f, v in sorted(caps.models.items()) if v) if caps else "(not probed)"
        packs = "\n".join(caps.packs) if caps and caps.packs else ("core only" if caps else "")
        table.add_row(row.name, redact(row.url), _tier_cell(row.kind, row.tier, row.cost_per_gpu_s, row.max_inflight),
                      row.state, health, caps.comfy_version if caps else "", device, packs,
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
    errors = {row.id: server_app.probe_server(ctx.db, row) for row in rows} if refresh else {}
    with ctx.db.session() as s:
        rows = [server_db.get_server(s, row.id) for row in rows]
    reports = {row.id: check_server(Capabilities.from_json(row.capabilities), lock) for row in rows}
    if as_json:
        print_json([{"name": r.name, "url": redact(r.url), "healthy": r.healthy,
                     "probe_error": redact(errors.get(r.id) or "") or None, **reports[r.id].to_json()} for r in rows])
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


KindOption = Annotated[str, typer.Option("--kind", help="comfyui (probed) | comfy_api_v2 | runpod (a provider: "
                                          "declare what it runs with --object-info or --node-class, and --model).")]
TierOption = Annotated[int | None, typer.Option("--tier", help="0: local, filled first; 1 and up: burst tiers.")]
CostOption = Annotated[float | None, typer.Option("--cost-per-gpu-s", help="What a GPU-second costs there.")]
ColdOption = Annotated[float | None, typer.Option("--cold-start-s", help="Expected start-up seconds of a job.")]
InflightOption = Annotated[int | None, typer.Option("--max-inflight", help="Jobs at once (default: the setting).")]
ObjectInfoOption = Annotated[Path | None, typer.Option("--object-info", exists=True, dir_okay=False,
                                                       help="A provider's /object_info dump (JSON).")]
NodeClassOption = Annotated[list[str] | None, typer.Option("--node-class", help="A provider's node class "
                                                           "(repeat it).")]
ModelOption = Annotated[list[str] | None, typer.Option("--model", help="A provider's model file, folder/file "
                                                       "(repeat it): checkpoints/sd15.safetensors.")]


def _declared(object_info: Path | None, node_classes: list[str] | None, models: list[str] | None
              ) -> Capabilities | None:
    """The capabilities a provider's operator declares on the command line (None: none declared)."""
    if object_info is None and not node_classes and not models:
        return None
    info = None
    if object_info is not None:
        try:
            info = json.loads(object_info.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"--object-info {object_info}: not a JSON file ({exc})") from exc
        if not isinstance(info, dict):
            raise InvalidInput(f"--object-info {object_info}: expected an /object_info object")
    by_folder: dict[str, list[str]] = {}
    for m in models or []:
        folder, sep, name = m.partition("/")
        if not sep or not folder or not name:
            raise InvalidInput(f"--model {m!r}: expected folder/file, like checkpoints/sd15.safetensors")
        by_folder.setdefault(folder, []).append(name)
    return server_app.declared_capabilities(info, node_classes, by_folder)


@servers_app.command("add")
def servers_add(url: str, name: str | None = None, kind: KindOption = "comfyui", tier: TierOption = None,
                cost_per_gpu_s: CostOption = None, cold_start_s: ColdOption = None,
                max_inflight: InflightOption = None, object_info: ObjectInfoOption = None,
                node_class: NodeClassOption = None, model: ModelOption = None) -> None:
    """Register a server (probed now; a server that is down is added and retried by the pool). A provider
    (--kind comfy_api_v2 or runpod) is asked its health only: declare what it can run."""
    ctx = context()
    try:
        tiering = Tiering(kind, tier or 0, cost_per_gpu_s or 0.0, cold_start_s or 0.0, max_inflight)
        declared = _declared(object_info, node_class, model)
        with ctx.db.session() as s:
            row = server_app.register_server(s, url, name, settings=ctx.settings, tiering=tiering, declared=declared)
    except MediaLabError as exc:
        fail(exc)
    error = server_app.probe_server(ctx.db, row, settings=ctx.settings)
    where = f"{row.kind}, tier {row.tier}" + (f", {row.cost_per_gpu_s:g}/GPU-s" if row.cost_per_gpu_s else "")
    console.print(f"server {row.name} ({redact(row.url)}; {where}) added"
                  + (f"; [red]not reachable now[/]: {redact(error)}" if error else ""))


@servers_app.command("set")
def servers_set(server: Annotated[str, typer.Argument(help="Name, id or URL.")], tier: TierOption = None,
                cost_per_gpu_s: CostOption = None, cold_start_s: ColdOption = None,
                max_inflight: InflightOption = None, object_info: ObjectInfoOption = None,
                node_class: NodeClassOption = None, model: ModelOption = None) -> None:
    """Change a server's tier, cost or capacity, or a provider's declared capabilities (the pool of `medialab
    serve` picks the change up at its next sync)."""
    changes = {k: v for k, v in (("tier", tier), ("cost_per_gpu_s", cost_per_gpu_s),
                                 ("cold_start_s", cold_start_s), ("max_inflight", max_inflight)) if v is not None}
    try:
        declared = _declared(object_info, node_class, model)
        if not changes and declared is None:
            raise InvalidInput("nothing to change: give --tier, --cost-per-gpu-s, --cold-start-s, --max-inflight "
                               "or declared capabilities")
        with session() as s:
            row = server_app.update_server(s, server, changes, declared)
            shown = _tier_cell(row.kind, row.tier, row.cost_per_gpu_s, row.max_inflight).replace("\n", ", ")
    except MediaLabError as exc:
        fail(exc)
    console.print(f"server {row.name}: {shown}" + ("; capabilities declared" if declared else ""))


def _tier_cell(kind: str, tier: int, cost: float, max_inflight: int | None) -> str:
    """kind and tier, then the price per GPU-second and the slots (when set): compact for the list."""
    parts = [f"{cost:g}/GPU-s"] if cost else []
    parts += [f"max {max_inflight}"] if max_inflight else []
    return f"{kind} t{tier}" + (f"\n{' '.join(parts)}" if parts else "")


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
        error = server_app.probe_server(ctx.db, row, refresh=True)
        console.print(f"{row.name}: " + (f"[red]down[/] {error}" if error else "[green]healthy[/], capabilities read"))


def register(app: typer.Typer) -> None:
    app.add_typer(servers_app, name="servers")
