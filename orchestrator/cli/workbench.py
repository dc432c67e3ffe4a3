"""``medialab workbench``: the DAGGR workbench (docs/daggr.md), a daggr canvas of template nodes (or a
pipeline version's steps) that runs every node as a job on a running service, over its API."""

from __future__ import annotations

import re
from typing import Annotated, Any

import httpx
import typer

from orchestrator.cli.common import fail, parse_sets
from orchestrator.cli.remote import Remote, target
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.settings import get_settings
from orchestrator.workbench import offline
from orchestrator.workbench.chain import Step, from_pipeline, from_templates

HOST = "127.0.0.1"  # daggr has no auth: loopback only


def split_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@V`` / ``name@vV``."""
    m = re.fullmatch(r"([a-z0-9][a-z0-9-]*)(?:@v?(\d+))?", ref)
    if not m:
        raise InvalidInput(f"{ref!r}: expected NAME or NAME@VERSION")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def load_chain(remote: Remote, templates: list[str],
               pipeline: str | None) -> tuple[list[Step], str, dict[str, Any] | None]:
    """The steps to show, the graph's title and (for ``--pipeline``) the pipeline version as the API shows it."""
    if pipeline:
        name, version = split_ref(pipeline)
        path = f"/v1/pipelines/{name}" + (f"/versions/{version}" if version else "")
        definition = remote.request("GET", path).json()
        pins = definition.get("templates") or {}
        tvs = {sid: remote.template(pin["template"], pin["version"]) for sid, pin in pins.items()}
        return from_pipeline(definition, tvs), f"{name} v{definition['version']}", definition
    tvs = [remote.template(*split_ref(t)) for t in templates]
    return from_templates(tvs), " -> ".join(t.name for t in tvs), None


def save_running(port: int, name: str) -> dict[str, Any]:
    """Ask the workbench running on ``port`` to publish its chain as pipeline ``name``."""
    try:
        r = httpx.post(f"http://{HOST}:{port}/medialab/save", json={"name": name}, timeout=60)
    except httpx.HTTPError as exc:
        raise InvalidInput(f"no workbench on port {port} ({exc}): start one with `medialab workbench`") from exc
    body = r.json()
    if r.status_code >= 400:
        raise InvalidInput(f"saving pipeline {name}: {body.get('detail', body)}")
    return body


def workbench(templates: Annotated[list[str] | None, typer.Argument(
                  help="Templates (NAME or NAME@VERSION) to chain: each one's first image/video parameter takes "
                       "the previous one's output.")] = None,
              pipeline: Annotated[str | None, typer.Option(help="Open a pipeline version (NAME or NAME@VERSION) "
                                                                "as its chain of steps.")] = None,
              whole: Annotated[bool, typer.Option(help="With --pipeline: one node for the whole pipeline (each "
                                                       "run a pipeline run of the service).")] = False,
              port: Annotated[int, typer.Option(help="Port on 127.0.0.1; in use is an error.")] = 7860,
              set_: Annotated[list[str], typer.Option("--set", "-s", help="name=value: a starting value for the "
                                                       "first node's control (a file path for an image).")] = [],  # noqa: B006
              save: Annotated[str | None, typer.Option(help="Do not start: publish the chain of the workbench "
                                                            "running on --port as a version of pipeline NAME, with "
                                                            "the parameters its nodes last ran with.")] = None,
              url: Annotated[str | None, typer.Option(help="The service; default: the profile / MEDIALAB_URL.")] = None,
              profile: Annotated[str | None, typer.Option(help="Profile of ~/.config/medialab/config.toml; "
                                                          "default: MEDIALAB_PROFILE.")] = None,
              ) -> None:
    """Start the DAGGR workbench on a running service: every node run is a job there (lineage, retries, cancel
    are the service's); daggr keeps only a scratchpad under MEDIALAB_HOME/workbench."""
    try:
        if save:
            out = save_running(port, save)
            typer.echo(f"saved pipeline {out['name']} v{out['version']} ({out['content_hash'][:12]}): "
                       f"{' -> '.join(out.get('order') or [])}")
            return
        if bool(templates) == bool(pipeline):
            raise InvalidInput("name templates to chain, or --pipeline NAME (one of the two)")
        offline.require_daggr()
        settings = get_settings()
        folder = settings.home.resolve() / "workbench"
        offline.apply(folder)
        from orchestrator.workbench import nodes, server  # daggr reads the settings at import

        t = target(settings, profile)
        remote = Remote(url or t.url, settings.api_key if url else t.api_key)
        if whole and not pipeline:
            raise InvalidInput("--whole opens a pipeline: add --pipeline NAME")
        steps, title, definition = load_chain(remote, templates or [], pipeline)
        for name, value in parse_sets(set_).items():
            if name not in {p["name"] for p in steps[0].parameters}:
                raise InvalidInput(f"--set {name}: {steps[0].template.name} has no parameter '{name}'")
            steps[0].defaults[name] = str(value) if isinstance(value, str) else value
        runs = nodes.Runs()
        if whole and definition is not None:
            graph = nodes.build_pipeline_graph(remote, definition, steps, runs)
        else:
            graph = nodes.build_graph(remote, steps, runs, name=f"Media Lab workbench: {title}")
        app = server.make_app(graph, remote, steps, runs)
        server.require_free(HOST, port)
        typer.echo(f"workbench on http://{HOST}:{port}/ ({title}: {', '.join(s.id for s in steps)}; service "
                   f"{remote.url}; scratchpad {folder})")
        server.serve(app, HOST, port)
    except MediaLabError as exc:
        fail(exc)


def register(app: typer.Typer) -> None:
    app.command("workbench")(workbench)
