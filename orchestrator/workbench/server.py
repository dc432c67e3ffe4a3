"""The daggr app of the workbench: daggr's own server with an offline index page (no Google Fonts link) and
one route of ours, ``POST /medialab/save`` (the chain shown, as a pipeline version); served by uvicorn on
the port asked for, never another. Import after ``offline.apply``."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path
from typing import Any

import uvicorn
from daggr import DaggrServer, Graph
from fastapi import Body
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute

from orchestrator.cli.remote import Remote
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.workbench.chain import Step, to_pipeline
from orchestrator.workbench.nodes import Runs


def offline_index() -> str:
    """daggr's ``index.html`` without the lines that reach fonts.googleapis.com / fonts.gstatic.com."""
    index = (Path(inspect.getfile(DaggrServer)).parent / "frontend" / "dist" / "index.html").read_text()
    return "\n".join(line for line in index.splitlines() if "fonts.g" not in line)


def save_pipeline(remote: Remote, steps: list[Step], runs: Runs, name: str, description: str = "") -> dict[str, Any]:
    """Publish the chain as a version of pipeline ``name`` (``POST /v1/pipelines/{name}/versions``)."""
    body = to_pipeline(steps, runs.params, description) | {"name": name}
    return remote.request("POST", f"/v1/pipelines/{name}/versions", json=body).json()


def make_app(graph: Graph, remote: Remote, steps: list[Step], runs: Runs) -> Any:
    """daggr's FastAPI app with the offline ``/`` and the save route put first."""
    graph._validate_edges()  # what launch() would check
    server = DaggrServer(graph, api_server=True)
    page = offline_index()

    def index() -> HTMLResponse:
        return HTMLResponse(page)

    def save(name: str = Body(embed=True), description: str = Body("", embed=True)) -> JSONResponse:
        try:
            out = save_pipeline(remote, steps, runs, name, description)
        except MediaLabError as exc:
            return JSONResponse({"detail": exc.message, **exc.extra}, status_code=exc.status)
        return JSONResponse(out, status_code=201)

    server.app.router.routes[0:0] = [APIRoute("/", index, methods=["GET"]),
                                     APIRoute("/medialab/save", save, methods=["POST"])]
    return server.app


def require_free(host: str, port: int) -> None:
    """A port in use is an error (daggr's own launch would move to the next one silently)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InvalidInput(f"port {port} on {host} is in use ({exc.strerror}): pick another with --port") from exc


def serve(app: Any, host: str, port: int) -> None:
    """Run the app until interrupted (blocks)."""
    require_free(host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
