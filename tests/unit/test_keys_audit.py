"""API keys (expiry, revocation, rotation, the last admin, last-use throttling) and the audit trail: the pure
rules directly, the database functions on a real SQLite database (``session.info["actor"]`` set by hand, as
the API's request session has it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from orchestrator.app import keys as key_app
from orchestrator.app import servers as server_app
from orchestrator.app import templates as template_app
from orchestrator.core import keys, limits
from orchestrator.core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from orchestrator.db import audit
from orchestrator.db import keys as key_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import ApiKey, AuditEvent, TemplateVersionRow, now
from tests.unit.test_publish import GRAPH

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def key(roles: list[str] | None = None, **fields: object) -> ApiKey:
    return ApiKey(name=str(fields.pop("name", "k")), key_hash="h", roles=roles or ["run"], **fields)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield database
    database.engine.dispose()


def events(db: Database, action: str | None = None) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.exec(select(AuditEvent).where(True if action is None else AuditEvent.action == action)
                           .order_by(AuditEvent.id)))


# -- pure rules --------------------------------------------------------------------------------------
def test_key_states() -> None:
    assert keys.key_state(key(), T0) == "active"
    assert keys.key_state(key(expires_at=T0 + timedelta(seconds=1)), T0) == "active"
    assert keys.key_state(key(expires_at=T0), T0) == "expired"
    assert keys.key_state(key(revoked_at=T0 - timedelta(seconds=1)), T0) == "revoked"
    assert keys.key_state(key(revoked_at=T0 + timedelta(hours=1)), T0) == "revoking"  # a rotation's grace
    assert keys.key_state(key(revoked_at=T0, expires_at=T0 - timedelta(days=1)), T0) == "revoked"


def test_an_expired_key_is_refused_saying_so_a_revoked_one_like_an_unknown_one() -> None:
    with pytest.raises(Unauthorized, match="API key 'ci' expired at 2026-12-01T11:00:00"):
        keys.check_usable(key(name="ci", expires_at=T0 - timedelta(hours=1)), T0)
    for row in (None, key(revoked_at=T0)):
        with pytest.raises(Unauthorized, match="^unknown or revoked API key$"):
            keys.check_usable(row, T0)
    grace = key(revoked_at=T0 + timedelta(minutes=5))
    assert keys.check_usable(grace, T0) is grace


def test_last_use_is_written_at_most_once_a_minute() -> None:
    assert keys.needs_touch(None, T0)
    assert not keys.needs_touch(T0 - timedelta(seconds=59), T0)
    assert keys.needs_touch(T0 - timedelta(seconds=60), T0)
    assert not keys.needs_touch(T0 - timedelta(seconds=5), T0, interval_s=10)


def test_the_last_usable_admin_key_is_the_last_way_in() -> None:
    a1, a2 = key(["admin"], id="a1"), key(["admin"], id="a2")
    runner = key(["run"], id="r")
    assert keys.leaves_no_admin([a1, runner], a1, T0)
    assert not keys.leaves_no_admin([a1, a2, runner], a1, T0)
    assert not keys.leaves_no_admin([a1, runner], runner, T0)  # not an admin key
    expired = key(["admin"], id="x", expires_at=T0 - timedelta(days=1))
    assert keys.leaves_no_admin([a1, expired], a1, T0)  # an expired admin key is no way in
    assert not keys.leaves_no_admin([a1, expired], expired, T0)  # revoking it changes nothing
    leaving = key(["admin"], id="g", revoked_at=T0 + timedelta(hours=1))
    assert keys.leaves_no_admin([a1, leaving], a1, T0)  # one in its grace period will be gone soon


def test_expiry_forms_and_limits() -> None:
    assert keys.parse_expiry("30d", T0) == T0 + timedelta(days=30)
    assert keys.parse_expiry(" 12h", T0) == T0 + timedelta(hours=12)
    assert keys.parse_expiry("2w", T0) == T0 + timedelta(weeks=2)
    assert keys.parse_expiry("P3D", T0) == T0 + timedelta(days=3)
    assert keys.parse_expiry("2027-01-31", T0) == datetime(2027, 1, 31, tzinfo=UTC)
    assert keys.parse_expiry("2027-01-31T12:00:00+02:00", T0) == datetime(2027, 1, 31, 10, tzinfo=UTC)
    for never in (None, "", "never"):
        assert keys.parse_expiry(never, T0) is None
    with pytest.raises(InvalidInput, match="in the past"):
        keys.parse_expiry("2026-11-30", T0)
    with pytest.raises(InvalidInput, match="in the past"):
        keys.parse_expiry("0d", T0)
    for far in ("3651d", "999999999w", "9999-12-31"):
        with pytest.raises(InvalidInput, match="keys.MAX_EXPIRY=3650d") as exc:
            keys.parse_expiry(far, T0)
        assert exc.value.extra == {"limit": "keys.MAX_EXPIRY", "value": "3650d"}
    for bad in ("soon", "30 days", "2027-13-45", "-5d"):
        with pytest.raises(InvalidInput, match="expiry"):
            keys.parse_expiry(bad, T0)
    with pytest.raises(InvalidInput, match="keys.MAX_GRACE=7d"):
        keys.parse_grace("8d")
    assert keys.parse_grace(None) == timedelta(0) and keys.parse_grace("90s") == timedelta(seconds=90)
    assert keys.parse_since("1h", T0) == T0 - timedelta(hours=1)
    assert keys.parse_since("2026-11-01", T0) == datetime(2026, 11, 1, tzinfo=UTC)


def test_key_names_and_roles_are_checked() -> None:
    def check(name: str, max_length: int) -> str:  # as create_key checks a key name: the one name rule
        return limits.check_name(name, "key name", max_length, pattern=keys.NAME, rule=keys.NAME_RULE)

    with pytest.raises(InvalidInput, match="over the limit max_name_length=8") as exc:
        check("a" * 9, 8)
    assert exc.value.extra == {"limit": "max_name_length", "value": 8}
    for bad in ("", "-x", "a b", "x\x00", "ü"):
        with pytest.raises(InvalidInput, match="key name"):
            check(bad, 128)
    assert check("gpu-host_1.a@b+c", 128) == "gpu-host_1.a@b+c"
    with pytest.raises(InvalidInput, match="key name 'a b': use letters"):
        key_app.create_key(Session(), "a b", ["run"])  # refused before the session is touched
    with pytest.raises(InvalidInput, match="unknown role"):
        keys.parse_roles(["run", "wizard"])
    with pytest.raises(InvalidInput, match="at least one role"):
        keys.parse_roles([])


def test_audit_data_holds_no_secrets() -> None:
    data = {"url": "http://user:pa55@gpu1:8188/x?y=1", "key": "mlk_secret", "Password": "p", "nested": {
        "token": "t", "ok": ["https://u:p@[::1]:8188", 1, None]}, "at": T0}
    assert audit.scrub(data) == {"url": "http://user:***@gpu1:8188/x?y=1",
                                 "nested": {"ok": ["https://u:***@[::1]:8188", 1, None]},
                                 "at": "2026-12-01T12:00:00+00:00"}
    # the one redactor (server_urls.redact): URLs inside text too, and text that only looks like one is kept
    assert audit.scrub({"error": "GET http://a:pw@gpu2/prompt failed", "t": ("ws://tok@h",)}) == {
        "error": "GET http://a:***@gpu2/prompt failed", "t": ["ws://***@h"]}
    assert audit.scrub("not a url @ all") == "not a url @ all"


# -- keys in the database ----------------------------------------------------------------------------
def test_create_use_expire(db: Database) -> None:
    with db.session() as s:
        row, plain = key_app.create_key(s, "ci", ["run", "export"], "1h")
        assert plain.startswith("mlk_") and row.key_hash == keys.hash_key(plain) and plain not in row.key_hash
        assert row.roles == ["export", "run"] and row.created_by is None  # made on the host
        assert abs((row.expires_at - now()) - timedelta(hours=1)) < timedelta(seconds=5)
        assert key_app.authenticate(s, plain).id == row.id
        row.expires_at = now() - timedelta(seconds=1)
        s.add(row)
        s.commit()
        with pytest.raises(Unauthorized, match="API key 'ci' expired at"):
            key_app.authenticate(s, plain)
        with pytest.raises(Unauthorized, match="unknown or revoked"):
            key_app.authenticate(s, plain + "x")


def test_revoke_by_id_or_name_never_the_last_admin(db: Database) -> None:
    with db.session() as s:
        admin, admin_plain = key_app.create_key(s, "root", ["admin"])
        s.info["actor"] = admin
        runner, plain = key_app.create_key(s, "ci", ["run"])
        assert runner.created_by == admin.id  # made by an admin key over the API
        key_app.revoke_key(s, "ci")
        with pytest.raises(Unauthorized, match="unknown or revoked"):
            key_app.authenticate(s, plain)
        with pytest.raises(Conflict, match="revoked already"):
            key_app.revoke_key(s, runner.id)
        with pytest.raises(Conflict, match="last admin key"):
            key_app.revoke_key(s, "root")
        assert key_app.authenticate(s, admin_plain).id == admin.id  # still there
        other, _ = key_app.create_key(s, "root2", ["admin", "run"])
        key_app.revoke_key(s, admin.id)  # another admin key exists now
        with pytest.raises(Conflict, match="last admin key"):
            key_app.revoke_key(s, other.id)
        with pytest.raises(NotFound, match="unknown API key 'nobody'"):
            key_app.revoke_key(s, "nobody")
        assert [k.name for k in key_db.list_keys(s)] == ["root2"]
        assert [k.name for k in key_db.list_keys(s, include_revoked=True)] == ["root", "ci", "root2"]



def test_two_concurrent_revokes_of_the_last_two_admin_keys_leave_one(any_db: Database) -> None:
    """Two sessions revoke the last two admin keys at once. The first is held just before its commit until the
    second has passed the check in Python (which still sees the first key active) and reached the database
    (its lock or its UPDATE); then the first commits. Exactly one revoke may win."""
    db = any_db
    with db.session() as s:
        a, _ = key_app.create_key(s, "a", ["admin"])
        b, _ = key_app.create_key(s, "b", ["admin", "run"])
    first_at_commit, second_at_write, release = threading.Event(), threading.Event(), threading.Event()

    def on_commit(_conn: object) -> None:
        if threading.current_thread().name == "first":
            first_at_commit.set()
            release.wait(30)

    def on_execute(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if threading.current_thread().name == "second" and (
                "FOR UPDATE" in statement or statement.lstrip().startswith("UPDATE api_keys")):
            second_at_write.set()

    outcomes: dict[str, str] = {}

    def revoke(ref: str) -> None:
        try:
            with db.session() as s:
                key_app.revoke_key(s, ref)
            outcomes[threading.current_thread().name] = "revoked"
        except Conflict as exc:
            outcomes[threading.current_thread().name] = exc.message

    event.listen(db.engine, "commit", on_commit)
    event.listen(db.engine, "before_cursor_execute", on_execute)
    threads = [threading.Thread(target=revoke, args=(ref,), name=name) for name, ref in (("first", a.id),
                                                                                          ("second", b.id))]
    try:
        threads[0].start()
        assert first_at_commit.wait(30)
        threads[1].start()
        assert second_at_write.wait(30)
        time.sleep(0.3)  # let it reach the row lock / write lock (had it not yet, the outcome is the same)
    finally:
        release.set()
        for t in threads:
            t.join(60)
        event.remove(db.engine, "commit", on_commit)
        event.remove(db.engine, "before_cursor_execute", on_execute)
    assert outcomes["first"] == "revoked"
    assert "is the last admin key" in outcomes["second"]
    with db.session() as s:
        assert [k.name for k in key_db.list_keys(s)] == ["b"]
        assert [e.target for e in s.exec(select(AuditEvent).where(AuditEvent.action == "key.revoke"))] == [a.id]


def test_a_name_held_by_several_live_keys_needs_the_id(db: Database) -> None:
    with db.session() as s:
        a, _ = key_app.create_key(s, "trainer", ["train"])
        b, _ = key_app.create_key(s, "trainer", ["train"])
        with pytest.raises(Conflict, match=f"2 keys are named 'trainer' \\({a.id}, {b.id}\\): give the id"):
            key_db.get_key(s, "trainer")
        assert key_db.get_key(s, b.id).id == b.id
        key_app.revoke_key(s, a.id)
        assert key_db.get_key(s, "trainer").id == b.id  # the only live one


def test_rotate_keeps_name_roles_and_expiry_and_revokes_the_old_key(db: Database) -> None:
    with db.session() as s:
        old, old_plain = key_app.create_key(s, "ci", ["publish", "run"], "30d")
        new, new_plain, previous = key_app.rotate_key(s, "ci")
        assert previous.id == old.id and new.id != old.id and new_plain != old_plain
        assert (new.name, new.roles, new.expires_at) == ("ci", ["publish", "run"], old.expires_at)
        assert key_app.authenticate(s, new_plain).id == new.id
        with pytest.raises(Unauthorized, match="unknown or revoked"):
            key_app.authenticate(s, old_plain)
        with pytest.raises(Conflict, match="is revoked"):
            key_app.rotate_key(s, old.id)
        assert key_db.get_key(s, "ci").id == new.id  # the name now means the new key


def test_rotate_with_a_grace_period_and_a_new_expiry(db: Database) -> None:
    with db.session() as s:
        old, old_plain = key_app.create_key(s, "ci", ["run"], "1d")
        new, new_plain, _ = key_app.rotate_key(s, old.id, grace="1h", expires="never")
        assert new.expires_at is None
        assert keys.key_state(old, now()) == "revoking" and key_app.authenticate(s, old_plain).id == old.id
        assert key_db.get_key(s, "ci").id == new.id  # the one not being revoked
        old.revoked_at = now() - timedelta(seconds=1)  # the grace period is over
        s.add(old)
        s.commit()
        with pytest.raises(Unauthorized):
            key_app.authenticate(s, old_plain)
        expired, _ = key_app.create_key(s, "old", ["run"], "1h")
        expired.expires_at = now() - timedelta(hours=1)
        s.add(expired)
        s.commit()
        with pytest.raises(InvalidInput, match="expired at .*give the new key an expiry"):
            key_app.rotate_key(s, "old")
        renewed, plain, _ = key_app.rotate_key(s, "old", expires="7d")
        assert key_app.authenticate(s, plain).id == renewed.id
        with pytest.raises(InvalidInput, match="keys.MAX_GRACE=7d"):
            key_app.rotate_key(s, renewed.id, grace="30d")


def test_touch_writes_once_a_minute_and_once_among_concurrent_requests(db: Database) -> None:
    with db.session() as s:
        row, _ = key_app.create_key(s, "busy", ["run"])
    with db.session() as s:
        row = s.get(ApiKey, row.id)
        assert key_app.touch(s, row, at=T0)
        assert row.last_used_at == T0 and not s.dirty  # the object reads the new value, nothing left to flush
        assert not key_app.touch(s, row, at=T0 + timedelta(seconds=30))
        assert key_app.touch(s, row, at=T0 + timedelta(seconds=61))
    with db.session() as s:
        assert s.get(ApiKey, row.id).last_used_at == T0 + timedelta(seconds=61)
    # many requests of one key read the same stale row at once: one conditional UPDATE wins
    stale = []
    for _ in range(8):
        with db.session() as s:
            stale.append((s, s.get(ApiKey, row.id)))
    later = T0 + timedelta(seconds=200)
    wrote: list[bool] = []
    threads = [threading.Thread(target=lambda s=s, r=r: wrote.append(key_app.touch(s, r, at=later))) for s, r in stale]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wrote) == [False] * 7 + [True]
    for s, _r in stale:
        s.close()


# -- the audit trail ---------------------------------------------------------------------------------
def test_audit_rows_name_the_actor_and_go_with_their_transaction(db: Database) -> None:
    with db.session() as s:
        admin, _ = key_app.create_key(s, "root", ["admin"])
    with db.session() as s:
        s.info["actor"] = admin
        audit.record(s, "server.drain", "gpu1")
        s.rollback()  # the change did not happen: neither did its audit row
        audit.record(s, "server.add", "gpu1", {"url": "http://u:secret@gpu1:8188"})
        s.commit()
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(Session(), "server.explode", "gpu1")
    rows = events(db)
    assert [(r.action, r.api_key_id, r.key_name) for r in rows] == [("key.create", None, None),
                                                                    ("server.add", admin.id, "root")]
    assert rows[1].data == {"url": "http://u:***@gpu1:8188"}


def test_service_changes_are_audited_once_and_not_when_rolled_back(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        admin, _ = key_app.create_key(s, "root", ["admin"])
    with db.session() as s:
        s.info["actor"] = admin
        server = server_app.register_server(s, "http://user:pw@gpu1:8188", "gpu1")
        server_app.register_server(s, "http://user:pw@gpu1:8188", "gpu1")  # registered already: no change
        server_app.set_server_state(s, "gpu1", "draining")
        server_app.set_server_state(s, "gpu1", "active")
        server_app.remove_server(s, server.id)
        v1 = template_app.publish_template(s, None, "scaler", GRAPH)
        template_app.set_deprecated(s, "scaler", 1)

    raced: list[bool] = []

    def publish_collides(session: Session, _ctx: object, _instances: object) -> None:
        """Someone else publishes the same version between our read and our commit."""
        if any(isinstance(o, TemplateVersionRow) for o in session.new) and not raced:
            raced.append(True)
            with db.session() as other:
                other.add(TemplateVersionRow(name="scaler", version=2, content_hash="x", title="t", kind="image",
                                             manifest={}, graph={}, source="published"))
                other.commit()

    event.listen(Session, "before_flush", publish_collides)
    try:
        with db.session() as s:
            s.info["actor"] = admin
            with pytest.raises(Conflict, match="published by someone else"):
                template_app.publish_template(s, None, "scaler", {**GRAPH, "5": {**GRAPH["5"], "inputs": {
                    **GRAPH["5"]["inputs"], "filename_prefix": "v2"}}})
    finally:
        event.remove(Session, "before_flush", publish_collides)
    assert raced == [True]
    rows = [r for r in events(db) if r.action != "key.create"]
    assert [(r.action, r.target) for r in rows] == [
        ("server.add", "gpu1"), ("server.drain", "gpu1"), ("server.activate", "gpu1"), ("server.remove", "gpu1"),
        ("template.publish", "scaler@v1"), ("template.deprecate", "scaler@v1")]
    assert all(r.api_key_id == admin.id and r.key_name == "root" for r in rows)
    assert rows[0].data == {"id": server.id, "url": "http://user:***@gpu1:8188", "source": "api",  # no password
                            "kind": "comfyui", "tier": 0, "cost_per_gpu_s": 0.0, "cold_start_s": 0.0,
                            "max_inflight": None}
    assert rows[4].data == {"content_hash": v1.content_hash}


def test_query_filters_and_bounds(db: Database) -> None:
    with db.session() as s:
        admin, _ = key_app.create_key(s, "root", ["admin"])
    with db.session() as s:
        s.info["actor"] = admin
        audit.record(s, "job.submit", "j1")
        audit.record(s, "job.cancel", "j1")
        audit.record(s, "server.add", "gpu1")
        s.commit()
    with db.session() as s:
        def q(**kw: object) -> list[tuple[str, str]]:
            return [(e.action, e.target) for e in audit.query(s, **kw)]

        assert q(action="job") == [("job.cancel", "j1"), ("job.submit", "j1")]  # newest first
        assert q(action="job.submit") == [("job.submit", "j1")]
        assert q(action="jo") == []  # a group is a whole prefix
        assert q(key="root") == q(key=admin.id) == [("server.add", "gpu1"), ("job.cancel", "j1"),
                                                     ("job.submit", "j1")]
        assert q(key=audit.CLI) == [("key.create", admin.id)]
        assert q(target="gpu1") == [("server.add", "gpu1")]
        assert q(since=now() + timedelta(seconds=5)) == []
        assert q(limit=1, offset=1) == [("job.cancel", "j1")]
        with pytest.raises(InvalidInput, match="audit.MAX_LIMIT=500"):
            audit.query(s, limit=501)
        with pytest.raises(InvalidInput, match="limits.MAX_OFFSET"):
            audit.query(s, offset=2**63)
