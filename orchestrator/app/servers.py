"""Server use cases: register, drain/activate, remove, refresh (probe now and record what was read)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from orchestrator.comfy.client import ComfyClient
from orchestrator.core import limits, server_urls
from orchestrator.core.errors import Conflict, InvalidInput, MediaLabError, NotFound
from orchestrator.db import audit
from orchestrator.db.attempts import inflight_by_server
from orchestrator.db.servers import get_server, record_health, record_probe, server_rows
from orchestrator.db.tables import (
    ServerRow,
)
from orchestrator.runtime import dns
from orchestrator.runtime.pool import probe
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.core.capabilities import Capabilities
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool


def register_server(session: Session, url: str, name: str | None = None, source: str = "api",
                    settings: Settings | None = None) -> ServerRow:
    """Add a server (or return it if this URL is registered already, in any spelling of its canonical form).

    The URL is validated before anything is stored (``server_urls.parse_server_url``) and the name is checked
    (``max_name_length``, printable). A URL that reaches a registered server by another name (localhost vs
    127.0.0.1) is refused (409, naming that server): two rows for one ComfyUI would count its capacity twice."""
    max_name = (settings or get_settings()).max_name_length
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
    row = ServerRow(name=name, url=su.url, source=source)
    session.add(row)
    audit.record(session, "server.add", row.name, {"id": row.id, "url": su.shown, "source": source})
    try:
        session.commit()
    except IntegrityError as exc:  # registered by someone else at the same moment
        session.rollback()
        raise Conflict(f"server {name!r} ({su.shown}) was registered by someone else just now") from exc
    return row


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


def probe_server(db: Database, row: ServerRow, refresh: bool = False, timeout_s: float = 10) -> str | None:
    """Probe one server now, without a pool (the CLI), and record the result (``record_probe_result``);
    returns the error, if any. No session is open while the server is asked."""
    client = ComfyClient(row.url, timeout=timeout_s)
    caps: Capabilities | None = None
    error: str | None = None
    try:
        caps = probe(client)
    except MediaLabError as exc:
        error = exc.message
    finally:
        client.close()
    with db.session() as s:
        record_probe_result(s, row, caps, error, refresh)
    return error
