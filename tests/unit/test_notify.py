"""The in-process bell: a committed job event rings its job (and QUEUED for queued jobs), a rollback rings
nothing, and an asyncio waiter never loses a ring that comes between clear() and wait(). The event watcher
rings for events committed by another process."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from orchestrator.core.states import JobState
from orchestrator.db import jobs as job_db
from orchestrator.db.engine import Database
from orchestrator.db.notify import QUEUED, AsyncWaiter, Bell, EventWatcher, behind, next_high
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
        assert job_db.transition(s, job_id, JobState.QUEUED, JobState.CANCELLED, "x")
        s.flush()
        s.rollback()
        s.commit()  # nothing left to commit: nothing rings
    assert heard == []
    with db.session() as s:
        job_db.add_event(s, job_id, "progress", "1/2")
        assert heard == []  # added, not committed yet
        s.commit()
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


def test_behind_rings_jobs_with_a_follower_below_their_newest_event() -> None:
    latest = {"a": 7, "b": 3, "x": 9}
    assert behind(latest, {"a": [7], "b": [3]}) == []  # every follower has read all: nothing rings
    assert behind(latest, {"a": [7, 5], "b": [3]}) == ["a"]  # one follower of a is behind
    assert behind(latest, {"a": [None], "b": [None, 3]}) == []  # not read yet: it reads anyway
    assert behind(latest, {"c": [0]}) == []  # no recent event of c
    assert behind({"b": 3}, {"b": [2]}) == ["b"]  # id 3 committed after a higher one was seen (PostgreSQL)
    assert next_high(None, {}) is None and next_high(None, {"a": 4, "b": 9}) == 9 and next_high(12, {"a": 4}) == 12


def test_watcher_rings_for_events_committed_by_another_database_and_stops_when_idle(tmp_path: Path) -> None:
    """Two Database objects on one file stand for two processes: the other one's commit rings nothing here,
    the watcher does (within about its interval), only for watched jobs whose follower is behind, and it stops
    when nothing is watched."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    here, elsewhere = Database(url), Database(url)
    watched, other = queue_jobs(elsewhere, 2, tmp_path)
    with here.session() as s:
        (queued,) = job_db.events_after(s, watched)
    watcher = EventWatcher(here.bell, here.latest_events, interval_s=0.05, idle_exit_s=0.2)
    rung = threading.Event()
    heard = listen(here.bell, watched, other)
    here.bell.subscribe(watched, rung.set)
    follower = watcher.watch(watched)
    follower.position = queued.id  # it has read the QUEUED event
    deadline = time.monotonic() + 5
    while watcher.ticks < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard == []  # caught up: no ring
    with elsewhere.session() as s:
        job_db.add_event(s, other, "progress", "not watched")
        s.commit()
        job_db.add_event(s, watched, "progress", "1/2")
        s.commit()
    assert rung.wait(2), "no ring for an event committed elsewhere"
    assert set(heard) == {watched}
    follower.close()
    follower.close()  # twice is harmless
    assert watcher.watched == {}
    deadline = time.monotonic() + 5
    while watcher._thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher._thread is None, "the watcher kept running with nothing watched"
    ticks = watcher.ticks
    time.sleep(0.2)
    assert watcher.ticks == ticks  # no query while idle
    again = watcher.watch(watched)  # and it starts again when needed
    again.position = queued.id
    rung.clear()
    with elsewhere.session() as s:
        job_db.add_event(s, watched, "progress", "2/2")
        s.commit()
    assert rung.wait(2)
    again.close()
    watcher.close()
