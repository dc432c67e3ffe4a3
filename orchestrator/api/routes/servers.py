from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import AdminKey, AnyKey, CtxDep, SessionDep
from orchestrator.api.schemas import Label
from orchestrator.app import servers as server_app
from orchestrator.core.burst import MAX_TIER, Tiering
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.lock import WorkerLock, check_server
from orchestrator.core.server_urls import MAX_SERVER_URL_LENGTH, redact
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.db.tables import ServerRow
from orchestrator.runtime.worker_lock import load_lock

router = APIRouter(prefix="/servers", tags=["servers"])


# Declared capabilities of a provider (an /object_info dump is too big for a body: the CLI sends its keys).
NodeClasses = Annotated[list[Label] | None, Field(
    max_length=100_000, description="A provider's node classes (required for a provider kind, with models).")]
Models = Annotated[dict[Label, Annotated[list[Label], Field(max_length=100_000)]] | None, Field(
    description="A provider's model files by folder: {\"checkpoints\": [\"a.safetensors\"], ...}.")]


class ServerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://[user:password@]host[:port][/path], at most "
                     f"{MAX_SERVER_URL_LENGTH} characters; credentials are never shown again.")
    name: str | None = Field(None, description="Default: host[:port][/path] of the URL.")
    kind: Literal["comfyui", "comfy_api_v2", "runpod"] = Field(
        "comfyui", description="comfyui: a ComfyUI driven natively (probed); comfy_api_v2, runpod: a managed "
        "provider, whose capabilities are declared (node_classes, models).")
    tier: int = Field(0, ge=0, le=MAX_TIER, description="0: local, filled first; 1 and up: burst tiers, in order.")
    cost_per_gpu_s: float = Field(0.0, ge=0, lt=1e6, allow_inf_nan=False,
                                  description="What a GPU-second costs there (the burst budgets' unit).")
    cold_start_s: float = Field(0.0, ge=0, lt=1e6, allow_inf_nan=False,
                                description="Expected start-up seconds of a burst job (in cost estimates).")
    max_inflight: int | None = Field(None, ge=1, le=10_000, description="Jobs at once (default: max_inflight).")
    node_classes: NodeClasses = None
    models: Models = None


class ServerChange(BaseModel):
    """A server's tier, cost or capacity, and a provider's declared capabilities; what is left out is kept."""

    model_config = ConfigDict(extra="forbid")

    tier: int | None = Field(None, ge=0, le=MAX_TIER)
    cost_per_gpu_s: float | None = Field(None, ge=0, lt=1e6, allow_inf_nan=False)
    cold_start_s: float | None = Field(None, ge=0, lt=1e6, allow_inf_nan=False)
    max_inflight: int | None = Field(None, ge=1, le=10_000, description="null: back to the default.")
    node_classes: NodeClasses = None
    models: Models = None


TIER_FIELDS = ("tier", "cost_per_gpu_s", "cold_start_s", "max_inflight")


def _declared(body: ServerAdd | ServerChange) -> Capabilities | None:
    """The provider's capabilities the body declares, if it declares any."""
    if body.node_classes is None and body.models is None:
        return None
    return server_app.declared_capabilities(None, body.node_classes, body.models)


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
        "kind": row.kind, "tier": row.tier, "cost_per_gpu_s": row.cost_per_gpu_s, "cold_start_s": row.cold_start_s,
        "max_inflight": row.max_inflight,
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
    tiering = Tiering(body.kind, body.tier, body.cost_per_gpu_s, body.cold_start_s, body.max_inflight)
    row = server_app.register_server(session, body.url, body.name, settings=ctx.settings, tiering=tiering,
                                     declared=_declared(body))
    if ctx.pool:  # a provider is asked its health only (its capabilities are declared)
        ctx.pool.sync()
        srv = ctx.pool.get(row.url)
        if srv:
            ctx.pool.check(srv, refresh=True)
        session.refresh(row)
    return server_out(row, {})


@router.patch("/{ref}")
def change(ref: str, body: ServerChange, ctx: CtxDep, session: SessionDep, _: AdminKey) -> dict[str, Any]:
    """Change a server's tier, cost or capacity, or a provider's declared capabilities (node_classes, models)."""
    sent = body.model_dump(exclude_unset=True)
    changes = {k: v for k, v in sent.items() if k in TIER_FIELDS and (v is not None or k == "max_inflight")}
    row = server_app.update_server(session, ref, changes, _declared(body))
    if ctx.pool:
        ctx.pool.sync()
    return server_out(row, attempt_db.current_jobs(session))


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
