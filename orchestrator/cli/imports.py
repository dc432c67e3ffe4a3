"""``medialab import``: inputs in bulk from folders the service may read (``import_roots``) or URLs on allowlisted
origins (``url_allowlist``), with a progress bar and the counts at the end.

Against a running service over its API (``POST /v1/imports``) when one is named (MEDIALAB_URL, a profile,
``--profile``): a folder is then a path on the service's machine, and the bar advances per request (a folder,
or all the URLs). Otherwise here, through the use case (``app/imports.py``) on the configured database and store,
the bar advancing per file."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from custom_nodes.urls import is_url
from orchestrator.app import imports as import_app
from orchestrator.cli.common import console, context, err, fail
from orchestrator.cli.remote import Remote
from orchestrator.core.errors import MediaLabError
from orchestrator.settings import get_settings

STATUSES = ("stored", "already stored", "skipped", "failed")


def _columns() -> tuple[Any, ...]:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _print(items: list[dict[str, Any]]) -> None:
    counts = {s: 0 for s in STATUSES}
    for item in items:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
        if item["status"] == "failed" or (item["status"] == "skipped" and item.get("error")):
            err.print(f"{item['status']}: {item['source']}: {item.get('error')}", markup=False, highlight=False)
    console.print(", ".join(f"{counts[s]} {s}" for s in STATUSES))
    if counts["failed"]:
        raise typer.Exit(1)


def _remote(sources: list[str], tags: list[str], recursive: bool, profile: str | None) -> list[dict[str, Any]]:
    urls = [s for s in sources if is_url(s)]
    bodies = [{"folder": os.path.abspath(s), "recursive": recursive, "tags": tags} for s in sources if not is_url(s)]
    bodies += [{"urls": urls, "tags": tags}] if urls else []
    items: list[dict[str, Any]] = []
    with Remote.connect(get_settings(), profile) as remote, \
            Progress(*_columns(), console=err, transient=False) as bar:
        task = bar.add_task(f"importing on {remote.url}", total=len(bodies))
        for body in bodies:
            items += remote.request("POST", "/v1/imports", json=body, timeout=None).json()["items"]
            bar.advance(task)
    return items


def _local(sources: list[str], tags: list[str], recursive: bool) -> list[dict[str, Any]]:
    ctx = context()
    items: list[dict[str, Any]] = []
    try:
        with ctx.db.session() as s, Progress(*_columns(), console=err, transient=False) as bar:
            task = bar.add_task("importing", total=None)

            def step(done: int, total: int, _item: import_app.ImportItem) -> None:
                bar.update(task, completed=done, total=total)

            urls = [u for u in sources if is_url(u)]
            for folder in (f for f in sources if not is_url(f)):
                bar.update(task, description=f"importing {folder}", completed=0, total=None)
                result = import_app.import_folder(s, ctx.store, os.path.abspath(folder), ctx.settings, recursive,
                                                  tags, progress=step)
                items += [vars(i) for i in result.items]
            if urls:
                bar.update(task, description="importing URLs", completed=0, total=len(urls))
                items += [vars(i) for i in import_app.import_urls(s, ctx.store, urls, ctx.settings, tags,
                                                                   progress=step).items]
    finally:
        ctx.close()
    return items


def import_(sources: Annotated[list[str], typer.Argument(
                metavar="PATH_OR_URL...",
                help="Folders or files (inside import_roots, MEDIALAB_IMPORT_ROOTS) and URLs (on url_allowlist).")],
            tag: Annotated[list[str], typer.Option("--tag", "-t", help="A tag for every file (repeatable).")] = [],  # noqa: B006
            recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into "
                                                    "subfolders.")] = True,
            profile: Annotated[str | None, typer.Option(help="Import on this profile's service (default: "
                                                        "MEDIALAB_URL / MEDIALAB_PROFILE when set, else "
                                                        "here).")] = None,
            ) -> None:
    """Import inputs in bulk: the same bytes are stored once; tags source:<path or URL> and a sidecar JSON's
    keys (x.png.json or x.json); prints how many were stored, already stored, skipped and failed."""
    settings = get_settings()
    try:
        if profile or settings.url or settings.profile:
            items = _remote(sources, tag, recursive, profile)
        else:
            items = _local(sources, tag, recursive)
    except MediaLabError as exc:
        fail(exc)
    _print(items)


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
