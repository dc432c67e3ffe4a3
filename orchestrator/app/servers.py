"""Server use cases: register, drain/activate, remove, refresh (probe now and record what was read)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from orchestrator.comfy.client import ComfyClient
from orchestrator.core import limits, server_urls
from orchestrator.core.burst import Tiering
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import Conflict, InvalidInput, MediaLabError, NotFound
from orchestrator.db import audit
from orchestrator.db.attempts import inflight_by_server
from orchestrator.db.servers import get_server, record_health, record_probe, server_rows
from orchestrator.db.tables import (
    ServerRow,
    now,
)
from orchestrator.runtime import dns
from orchestrator.runtime.pool import connect_provider, probe
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool


def register_server(session: Session, url: str, name: str | None = None, source: str = "api",
                    settings: Settings | None = None, tiering: Tiering | None = None,
                    declared: Capabilities | None = None) -> ServerRow:
    """Add a server (or return it if this URL is registered already, in any spelling of its canonical form).

    The URL is validated before anything is stored (``server_urls.parse_server_url``) and the name is checked
    (``max_name_length``, printable). A URL that reaches a registered server by another name (localhost vs
    127.0.0.1) is refused (409, naming that server): two rows for one ComfyUI would count its capacity twice.
    ``tiering``: its kind, tier, cost and capacity (default: a local ComfyUI); ``declared``: the capabilities of
    a provider, which cannot be probed (required for the kinds other than comfyui)."""
    max_name = (settings or get_settings()).max_name_length
    tiering = (tiering or Tiering()).check()
    if tiering.kind != "comfyui" and declared is None:
        raise InvalidInput(f"a {tiering.kind} server cannot be probed: declare what it can run (its node classes "
                           "or an /object_info dump, and its model files)")
    su = server_urls.parse_server_url(url)
    if name is not None:
        limits.check_name(name, "server name", max_name)
        if not name.strip():
            raise InvalidInput("a server name is not empty")
    row = session.exec(select(ServerRow).where(ServerRow.url == su.url)).first()
    if row:
        return row
    name = name or limits.check_name(su.default_name, f"server name {su.default_name[:40]!r}... (from the URL: "
                                     "give a shorter one)", max_name)
    if session.exec(select(ServerRow).where(ServerRow.name == name)).first():
        raise Conflict(f"a server named {name!r} exists already")
    registered = []
    for other in server_rows(session):
        parsed = server_urls.canonical(other.url)
        if parsed is not None:
            registered.append((other.name, server_urls.parse_server_url(parsed)))
    if registered:
        resolved: dict[str, frozenset[str]] = {}

        def addresses(u: server_urls.ServerUrl) -> frozenset[str]:
            if u.host not in resolved:
                resolved[u.host] = dns.server_addresses(u)
            return resolved[u.host]

        same = server_urls.duplicate_of(su, addresses(su), [(n, u, addresses(u)) for n, u in registered
                                                            if (u.port, u.path) == (su.port, su.path)])
        if same is not None:
            raise Conflict(f"{su.shown} is server {same!r} under another name (the same address, port and path); "
                           f"use {same!r}, or remove it first", server=same)
    row = ServerRow(name=name, url=su.url, source=source, **vars(tiering))
    if declared is not None:
        row.capabilities, row.refreshed_at = declared.to_json(), now()
    session.add(row)
    audit.record(session, "server.add", row.name, {"id": row.id, "url": su.shown, "source": source,
                                                   **vars(tiering)})
    try:
        session.commit()
    except IntegrityError as exc:  # registered by someone else at the same moment
        session.rollback()
        raise Conflict(f"server {name!r} ({su.shown}) was registered by someone else just now") from exc
    return row


def update_server(session: Session, ref: str, changes: dict[str, Any], declared: Capabilities | None = None
                  ) -> ServerRow:
    """Change a server's tier, cost or capacity (``Tiering`` fields) and, for a provider, its declared
    capabilities; audited as ``server.update``. The pool picks the change up at its next sync."""
    row = get_server(session, ref)
    unknown = set(changes) - {"tier", "cost_per_gpu_s", "cold_start_s", "max_inflight"}
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))} of a server (remove and add it again)")
    current = Tiering(row.kind, row.tier, row.cost_per_gpu_s, row.cold_start_s, row.max_inflight)
    tiering = dataclasses.replace(current, **changes).check()
    for field, value in vars(tiering).items():
        setattr(row, field, value)
    if declared is not None:
        if row.kind == "comfyui":
            raise InvalidInput(f"server {row.name} is a ComfyUI: its capabilities are probed, not declared")
        row.capabilities, row.refreshed_at = declared.to_json(), now()
    session.add(row)
    audit.record(session, "server.update", row.name, {"id": row.id, **changes,
                                                      **({"declared": True} if declared else {})})
    session.commit()
    return row


def declared_capabilities(object_info: dict[str, Any] | None, node_classes: list[str] | None,
                          models: dict[str, list[str]] | None) -> Capabilities:
    """A provider's capabilities as its operator declares them: an /object_info dump (its node definitions, so
    the sandbox knows their file inputs) or a list of node classes, and its model files by folder."""
    if object_info is None and not node_classes:
        raise InvalidInput("declare the provider's node classes (node_classes) or an /object_info dump")
    models = models or {}
    for folder, files in models.items():
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise InvalidInput(f"models.{folder}: a list of file names")
    if object_info is not None:
        return Capabilities.from_probe(object_info, models, {})
    return Capabilities(node_classes=frozenset(node_classes or ()), models={f: frozenset(v) for f, v in
                                                                            models.items()})


SERVER_STATE_ACTIONS = {"draining": "server.drain", "active": "server.activate"}


def set_server_state(session: Session, ref: str, state: str) -> ServerRow:
    """``state``: draining or active (a key of ``SERVER_STATE_ACTIONS``)."""
    action = SERVER_STATE_ACTIONS[state]
    row = get_server(session, ref)
    row.state = state
    session.add(row)
    audit.record(session, action, row.name, {"id": row.id})
    session.commit()
    return row


def remove_server(session: Session, ref: str) -> ServerRow:
    row = get_server(session, ref)
    busy = inflight_by_server(session).get(row.url, 0)
    if busy:
        raise Conflict(f"server {row.name} has {busy} job(s) in flight: drain it and wait, then remove it")
    session.delete(row)
    audit.record(session, "server.remove", row.name, {"id": row.id, "url": row.url})
    session.commit()
    return row


# -- refresh: health and capabilities read now ------------------------------------------------------
def refresh_server(session: Session, ref: str, pool: Pool | None) -> ServerRow:
    """Read the server's health and capabilities now through this process's pool (which records them in its
    own transaction), then record ``server.refresh``. NotFound when the pool does not hold the server yet."""
    row = get_server(session, ref)
    srv = pool.get(row.url) if pool else None
    if pool is None or srv is None:
        raise NotFound(f"server {ref} is not in this process's pool yet; retry in a few seconds")
    pool.check(srv, refresh=True)
    session.refresh(row)
    audit.record(session, "server.refresh", row.name, {"id": row.id, "healthy": row.healthy})
    session.commit()
    return row


def record_probe_result(session: Session, row: ServerRow, caps: Capabilities | None, error: str | None,
                        refresh: bool = False) -> None:
    """Record one probe of the server: the capabilities it read (and the server healthy), or, with ``error``,
    the server down; with ``refresh`` also the ``server.refresh`` audit row, in the same transaction."""
    if caps is None:
        record_health(session, row.id, False, error)
    else:
        record_probe(session, row.id, caps)
    if refresh:
        audit.record(session, "server.refresh", row.name, {"id": row.id, "healthy": error is None})
    session.commit()


def probe_server(db: Database, row: ServerRow, refresh: bool = False, timeout_s: float = 10,
                 settings: Settings | None = None) -> str | None:
    """Probe one server now, without a pool (the CLI), and record the result (``record_probe_result``);
    returns the error, if any. No session is open while the server is asked. A provider is asked its health
    (its capabilities are declared, and kept)."""
    token = (settings or get_settings()).provider_tokens.get(row.name)
    caps: Capabilities | None = None
    error: str | None = None
    if row.kind != "comfyui":
        remote = connect_provider(row.kind, row.url, token)
        try:
            health = remote.health()
            error = None if health.ok else health.detail or "unhealthy"
        except MediaLabError as exc:
            error = exc.message
        finally:
            remote.close()
        caps = Capabilities.from_json(row.capabilities) if error is None else None
        with db.session() as s:
            record_probe_result(s, row, caps, error, refresh)
        return error
    client = ComfyClient(row.url, timeout=timeout_s, token=token)
    try:
        caps = probe(client)
    except MediaLabError as exc:
        error = exc.message
    finally:
        client.close()
    with db.session() as s:
        record_probe_result(s, row, caps, error, refresh)
    return error
