from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import AdminKey, AnyKey, CtxDep, SessionDep
from orchestrator.app import servers as server_app
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.lock import WorkerLock, check_server
from orchestrator.core.server_urls import MAX_SERVER_URL_LENGTH, redact
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.db.tables import ServerRow
from orchestrator.runtime.worker_lock import load_lock

router = APIRouter(prefix="/servers", tags=["servers"])


class ServerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://[user:password@]host[:port][/path], at most "
                     f"{MAX_SERVER_URL_LENGTH} characters; credentials are never shown again.")
    name: str | None = Field(None, description="Default: host[:port][/path] of the URL.")


def server_out(row: ServerRow, jobs: dict[str, list[str]]) -> dict[str, Any]:
    """A server as the API shows it: its URL and last error without credentials."""
    caps = Capabilities.from_json(row.capabilities)
    return {
        "id": row.id, "name": row.name, "url": redact(row.url), "state": row.state, "source": row.source,
        "healthy": row.healthy, "last_seen": row.last_seen, "last_error": redact(row.last_error or "") or None,
        "refreshed_at": row.refreshed_at, "current_jobs": jobs.get(row.url, []),
        "comfy_version": caps.comfy_version if caps else None, "device": caps.device if caps else None,
        "vram_total": caps.vram_total if caps else None, "vram_free": caps.vram_free if caps else None,
        "packs": list(caps.packs) if caps else [], "node_classes": len(caps.node_classes) if caps else 0,
        "models": {f: sorted(v) for f, v in caps.models.items() if v} if caps else {},
    }


@router.get("")
def list_servers(session: SessionDep, _: AnyKey) -> list[dict[str, Any]]:
    jobs = attempt_db.current_jobs(session)
    return [server_out(r, jobs) for r in server_db.server_rows(session)]


def check_out(row: ServerRow, lock: WorkerLock) -> dict[str, Any]:
    """One server against the worker lock, from its last recorded capabilities."""
    report = check_server(Capabilities.from_json(row.capabilities), lock)
    return {"name": row.name, "url": redact(row.url), "state": row.state, "healthy": row.healthy,
            "refreshed_at": row.refreshed_at, **report.to_json()}


@router.get("/check")
def check_all(session: SessionDep, _: AnyKey) -> list[dict[str, Any]]:
    """Every server against worker.lock.toml: missing packs, node classes, models and Python packages, a
    ComfyUI version or pack commit that differs, what the server cannot report, packs the lock lacks."""
    lock = load_lock()
    return [check_out(r, lock) for r in server_db.server_rows(session)]


@router.get("/{ref}/check")
def check_one(ref: str, session: SessionDep, _: AnyKey) -> dict[str, Any]:
    return check_out(server_db.get_server(session, ref), load_lock())


@router.post("", status_code=201)
def add(body: ServerAdd, ctx: CtxDep, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    row = server_app.register_server(session, body.url, body.name, settings=ctx.settings)
    if ctx.pool:
        ctx.pool.sync()
        srv = ctx.pool.get(row.url)
        if srv:
            ctx.pool.check(srv, refresh=True)
        session.refresh(row)
    return server_out(row, {})


@router.post("/{ref}/drain")
def drain(ref: str, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    """No new jobs go to the server; the ones on it finish."""
    return server_out(server_app.set_server_state(session, ref, "draining"), attempt_db.current_jobs(session))


@router.post("/{ref}/activate")
def activate(ref: str, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    return server_out(server_app.set_server_state(session, ref, "active"), attempt_db.current_jobs(session))


@router.delete("/{ref}")
def remove(ref: str, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    return server_out(server_app.remove_server(session, ref), {})


@router.post("/{ref}/refresh")
def refresh(ref: str, ctx: CtxDep, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    """Read the server's health and capabilities now."""
    row = server_app.refresh_server(session, ref, ctx.pool)
    return server_out(row, attempt_db.current_jobs(session))
