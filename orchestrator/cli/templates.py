"""``medialab templates``: the template library (list, show, publish, open in ComfyUI, deprecate, diff)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.api.routes.templates import version_out
from orchestrator.app import templates as template_app
from orchestrator.cli.common import JsonOption, console, context, err, fail, print_json, session
from orchestrator.comfy.client import ComfyClient
from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.core.server_urls import redact
from orchestrator.db import servers as server_db
from orchestrator.db import templates as template_db

templates_app = typer.Typer(help="The template library.", no_args_is_help=True)


@templates_app.command("list")
def templates_list(as_json: JsonOption = False) -> None:
    """Every version of every template (``--json``: each as the API's TemplateVersionOut)."""
    ctx = context()
    table = Table("name", "version", "kind", "title", "hash", "source")
    with ctx.db.session() as s:
        rows = template_db.template_rows(s)
        if as_json:
            print_json([version_out(row) for row in rows])
            return
        for row in rows:
            table.add_row(row.name, f"v{row.version}" + (" (deprecated)" if row.deprecated else ""), row.kind,
                          row.title, row.content_hash[:12], row.source)
    console.print(table)


@templates_app.command("show")
def templates_show(name: str, version: int | None = None, as_json: JsonOption = False) -> None:
    """A version's parameters (``--json``: as GET /v1/templates/{name}/versions/{version}, with its parameter
    schema, manifest and graph)."""
    with session() as s:
        row, t = template_db.get_template(s, name, version)
        if as_json:
            print_json(version_out(row, full=True))
            return
    print_version(t)


def print_version(t: tpl.TemplateVersion) -> None:
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
    title: str | None = None,
    kind: Annotated[str | None, typer.Option(help="Default: the kind of the version the workflow was opened "
                                                  "from, else image.")] = None,
    description: str = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Every check, nothing stored: the version it would be, "
                                                            "its parameters and the diff.")] = False,
) -> None:
    """Publish the next version of a template, converted and checked with a live ComfyUI server of the pool
    (in ComfyUI itself: the Media Lab panel's "Publish as new version")."""
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
                if dry_run:
                    preview = template_app.preview_template(s, pool, name, graph_data, manifest_data, title=title,
                                                            kind=kind, description=description)
                else:
                    row = template_app.publish_template(s, pool, name, graph_data, manifest_data, title=title,
                                                        kind=kind, description=description)
    except MediaLabError as exc:
        fail(exc)
    finally:
        ctx.close()
    if dry_run:
        console.print(f"dry run: nothing stored; a publish would store [bold]{preview.template.ref}[/bold]")
        print_version(preview.template)
        if preview.base is not None:
            console.print(f"changes from {preview.base.ref}:")
            console.print_json(json.dumps(preview.diff))
        return
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
                  f"`medialab templates publish {meta['template']} FILE`. In a ComfyUI with the node pack, the "
                  "Media Lab panel opens and publishes versions without a file")


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


def register(app: typer.Typer) -> None:
    app.add_typer(templates_app, name="templates")
