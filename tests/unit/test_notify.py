"""The in-process bell: a committed job event rings its job (and QUEUED for queued jobs), a rollback rings
nothing, and an asyncio waiter never loses a ring that comes between clear() and wait()."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from orchestrator import service
from orchestrator.db import Database
from orchestrator.jobs import JobState
from orchestrator.notify import QUEUED, AsyncWaiter, Bell
from tests.unit.test_database import claim, queue_jobs


def listen(bell: Bell, *keys: str, heard: list[str] | None = None) -> list[str]:
    heard = [] if heard is None else heard
    for k in keys:
        bell.subscribe(k, lambda k=k: heard.append(k))
    return heard


def test_bell_calls_subscribers_of_the_key_until_unsubscribed() -> None:
    bell, heard = Bell(), []
    off = bell.subscribe("a", lambda: heard.append("a"))
    bell.subscribe("b", lambda: heard.append("b"))
    bell.ring(["a", "c"])
    off()
    bell.ring(["a", "b"])
    assert heard == ["a", "b"]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    bell, heard = Bell(), []

    def gone() -> None:
        raise RuntimeError("Event loop is closed")

    bell.subscribe("a", gone)
    bell.subscribe("a", lambda: heard.append("a"))
    bell.ring(["a"])
    assert heard == ["a"]


def test_commit_rings_the_job_and_queued(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    heard = listen(db.bell, QUEUED)
    (job_id,) = queue_jobs(db, 1, tmp_path)
    assert heard == [QUEUED]
    listen(db.bell, job_id, heard=heard)
    assert claim(db) == job_id  # QUEUED -> RUNNING, committed
    assert heard == [QUEUED, job_id]


def test_rollback_rings_nothing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (job_id,) = queue_jobs(db, 1, tmp_path)
    heard = listen(db.bell, job_id, QUEUED)
    with db.session() as s:
        assert service.transition(s, job_id, JobState.QUEUED, JobState.CANCELLED, "x", commit=False)
        s.flush()
        s.rollback()
        s.commit()  # nothing left to commit: nothing rings
    assert heard == []
    with db.session() as s:
        service.add_event(s, job_id, "progress", "1/2")
    assert heard == [job_id]


def test_async_waiter_wakes_on_a_ring_from_another_thread_and_times_out_otherwise() -> None:
    bell = Bell()

    async def scenario() -> tuple[bool, bool, bool]:
        with AsyncWaiter(bell, "job") as w:
            w.clear()
            bell.ring(["job"])  # between clear() and wait(): kept
            early = await w.wait(5)
            w.clear()
            threading.Timer(0.05, bell.ring, args=(["job"],)).start()
            threaded = await w.wait(5)
            w.clear()
            quiet = await w.wait(0.05)
        return early, threaded, quiet

    assert asyncio.run(scenario()) == (True, True, False)
    assert bell._subs == {}  # unsubscribed on exit
