"""The in-process bell: a committed job event rings its job (and QUEUED for queued jobs), a rollback rings
nothing, and an asyncio waiter never loses a ring that comes between clear() and wait(). The event watcher
rings for events committed by another process."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from orchestrator import service
from orchestrator.db import Database
from orchestrator.jobs import JobState
from orchestrator.notify import QUEUED, AsyncWaiter, Bell, EventWatcher, moved, next_high
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


def test_moved_rings_watched_jobs_whose_newest_event_passed_the_one_seen() -> None:
    ring, seen = moved({}, {"a": 7, "b": 3, "x": 9}, {"a", "b", "c"})  # first look: any recent event rings once
    assert sorted(ring) == ["a", "b"] and seen == {"a": 7, "b": 3}  # unwatched x and eventless c not kept
    ring, seen = moved(seen, {"a": 7, "b": 3}, {"a", "b", "c"})
    assert ring == [] and seen == {"a": 7, "b": 3}  # the same window again: nothing new, nothing rings
    ring, seen = moved(seen, {"a": 7, "b": 3, "c": 5}, {"a", "b", "c"})  # c: id 5 committed after 7 was seen
    assert ring == ["c"] and seen == {"a": 7, "b": 3, "c": 5}
    ring, seen = moved(seen, {"a": 8}, {"a"})  # b and c no longer watched: forgotten
    assert ring == ["a"] and seen == {"a": 8}
    assert next_high(None, {}) is None and next_high(None, {"a": 4, "b": 9}) == 9 and next_high(12, {"a": 4}) == 12


def test_watcher_rings_for_events_committed_by_another_database_and_stops_when_idle(tmp_path: Path) -> None:
    """Two Database objects on one file stand for two processes: the other one's commit rings nothing here,
    the watcher does (within about its interval), for watched jobs only, and stops when nothing is watched."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    here, elsewhere = Database(url), Database(url)
    watched, other = queue_jobs(elsewhere, 2, tmp_path)
    here.watcher = watcher = EventWatcher(here.bell, here.latest_events, interval_s=0.05, idle_exit_s=0.2)
    rung = threading.Event()
    heard = listen(here.bell, watched, other)
    here.bell.subscribe(watched, rung.set)
    unwatch = watcher.watch(watched)
    deadline = time.monotonic() + 5
    while watcher.ticks < 2 and time.monotonic() < deadline:  # a first look (its QUEUED event rings once)
        time.sleep(0.01)
    rung.clear()
    heard.clear()
    with elsewhere.session() as s:
        service.add_event(s, other, "progress", "not watched")
        service.add_event(s, watched, "progress", "1/2")
    assert rung.wait(2), "no ring for an event committed elsewhere"
    assert heard == [watched]
    unwatch()
    unwatch()  # twice is harmless
    assert watcher.watched == {}
    deadline = time.monotonic() + 5
    while watcher._thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher._thread is None, "the watcher kept running with nothing watched"
    ticks = watcher.ticks
    time.sleep(0.2)
    assert watcher.ticks == ticks  # no query while idle
    again = watcher.watch(watched)  # and it starts again when needed
    rung.clear()
    with elsewhere.session() as s:
        service.add_event(s, watched, "progress", "2/2")
    assert rung.wait(2)
    again()
    watcher.close()
