"""Refreshing a server (``app.servers``): through the pool (the API route), or by a probe of its own (the CLI).
The use case records what was read and the ``server.refresh`` audit row, and owns that commit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.app import servers as server_app
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import NotFound
from orchestrator.db import servers as server_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import AuditEvent, ServerRow
from tests.fakes.engine import Engine, start_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = start_engine(tmp_path)
    yield e
    e.close()


def refreshes(db: Database) -> list[tuple[str, dict]]:
    with db.session() as s:
        return [(r.target, r.data or {}) for r in s.exec(select(AuditEvent).where(AuditEvent.action == "server.refresh")
                                                         .order_by(AuditEvent.id))]


def server(db: Database, ref: str) -> ServerRow:
    with db.session() as s:
        return server_db.get_server(s, ref)


def test_refresh_through_the_pool_records_health_and_audit(engine: Engine) -> None:
    with engine.db.session() as s:
        row = server_app.refresh_server(s, "comfy-a", engine.pool)
        assert row.healthy and row.refreshed_at is not None
    assert refreshes(engine.db) == [("comfy-a", {"id": row.id, "healthy": True})]
    with engine.db.session() as s:
        with pytest.raises(NotFound, match="not in this process's pool yet"):
            server_app.refresh_server(s, "comfy-a", None)
        server_app.register_server(s, "http://127.0.0.1:9", "late")  # registered, not synced into the pool yet
        with pytest.raises(NotFound, match="not in this process's pool yet"):
            server_app.refresh_server(s, "late", engine.pool)
    assert len(refreshes(engine.db)) == 1  # a refresh that did not happen is not audited


def test_a_probe_result_is_recorded_with_its_audit_row_in_one_commit(engine: Engine) -> None:
    row = server(engine.db, "comfy-a")
    caps = Capabilities.from_json(row.capabilities)
    assert caps is not None
    with engine.db.session() as s:
        server_app.record_probe_result(s, row, None, "connection refused", refresh=True)
    down = server(engine.db, "comfy-a")
    assert (down.healthy, down.last_error) == (False, "connection refused")
    assert down.capabilities == row.capabilities  # the last capabilities read are kept
    with engine.db.session() as s:
        server_app.record_probe_result(s, row, caps, None)  # `servers check`/`add`: no audit row
    up = server(engine.db, "comfy-a")
    assert (up.healthy, up.last_error) == (True, None) and up.refreshed_at is not None
    assert refreshes(engine.db) == [("comfy-a", {"id": row.id, "healthy": False})]


def test_the_clis_own_probe_records_a_server_that_is_down(engine: Engine) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with engine.db.session() as s:
        row = server_app.register_server(s, f"http://127.0.0.1:{port}", "gone")
    error = server_app.probe_server(engine.db, row, refresh=True, timeout_s=2)
    assert error
    gone = server(engine.db, "gone")
    assert (gone.healthy, gone.last_error) == (False, error)
    assert refreshes(engine.db) == [("gone", {"id": row.id, "healthy": False})]
    assert server_app.probe_server(engine.db, row, timeout_s=2) == error  # no refresh: no audit row
    assert len(refreshes(engine.db)) == 1


def test_every_successful_health_check_is_the_servers_last_seen(engine: Engine) -> None:
    """`servers list` shows last_seen: a check that finds the server up (no probe due) must still move it."""
    from datetime import timedelta

    from sqlalchemy import update

    from orchestrator.db.tables import now
    old = now() - timedelta(seconds=66)
    with engine.db.session() as s:
        s.execute(update(ServerRow).where(ServerRow.name == "comfy-a").values(last_seen=old))
        s.commit()
    srv = engine.server(0)
    assert srv.healthy and srv.caps is not None
    engine.pool.check(srv)  # healthy, capabilities fresh: no probe
    seen = server(engine.db, "comfy-a").last_seen
    assert seen is not None and seen.replace(tzinfo=None) > old.replace(tzinfo=None) + timedelta(seconds=60)
