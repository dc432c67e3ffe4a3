"""In-process notifications: a committed change to a job rings its bell, so whoever follows it here
(the SSE stream of the job, the dispatcher for newly queued jobs) wakes at once instead of at its next poll.

The database stays the truth: a ring only says "look now". A commit by another process (a replica, the CLI)
rings nothing here by itself; for job events the process's one ``EventWatcher`` covers that: while any job
has a follower here, it looks for new events of all of them with one query per tick and rings their bells.
So a follower holds no database connection while it waits: it reads (a session per read) when rung, and at
a long safety interval. Never commits: it only hears of commits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)
QUEUED = "queued"  # rung when any job (re-)enters QUEUED
ANY_EVENT = "any-event"  # rung when any job got an event (a batch's stream follows its many jobs with it)


class Bell:
    """Callbacks by key (a job id, or QUEUED), called from the committing thread; keep them short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, list[Callable[[], None]]] = {}

    def subscribe(self, key: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever ``key`` rings; returns the function that unsubscribes."""
        with self._lock:
            self._subs.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = self._subs.get(key, [])
                if callback in subs:
                    subs.remove(callback)
                if not subs:
                    self._subs.pop(key, None)

        return unsubscribe

    def ring(self, keys: Iterable[str]) -> None:
        with self._lock:
            callbacks = [cb for k in keys for cb in self._subs.get(k, ())]
        for cb in callbacks:
            try:
                cb()
            except Exception:  # a listener that went away (e.g. its event loop closed) never fails a commit
                log.debug("bell listener failed", exc_info=True)


class AsyncWaiter:
    """An asyncio side of one bell key: ``clear()``, look at the database, then ``wait(timeout)``; a ring
    between the two is never lost. Use as a context manager (unsubscribes on exit)."""

    def __init__(self, bell: Bell | None, key: str, watcher: EventWatcher | None = None) -> None:
        """With ``watcher``, the key (a job id) is also watched for events committed by other processes."""
        self._bell, self._key, self._watcher = bell, key, watcher
        self._event = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._watch: Watch | None = None

    def __enter__(self) -> AsyncWaiter:
        if self._bell is not None:
            loop = asyncio.get_running_loop()
            self._unsubscribe = self._bell.subscribe(self._key, lambda: loop.call_soon_threadsafe(self._event.set))
        if self._watcher is not None:
            self._watch = self._watcher.watch(self._key)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watch:
            self._watch.close()
        if self._unsubscribe:
            self._unsubscribe()

    def clear(self) -> None:
        self._event.clear()

    def seen(self, event_id: int) -> None:
        """The follower has read the job's events up to ``event_id``: the watcher rings only for newer ones."""
        if self._watch is not None:
            self._watch.position = event_id

    async def wait(self, timeout: float) -> bool:
        """True when rung, False when ``timeout`` passed (poll anyway: another process may have written)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False


# -- events committed by other processes ------------------------------------------------------------------
LatestEvents = Callable[[int | None, int], Mapping[str, int]]
"""``(high, lag) -> {job id: newest event id}`` over the events with id > (high, or when None the newest event
id in the table) - lag: one short query (and session) for every job at once."""


def behind(latest: Mapping[str, int], positions: Mapping[str, Iterable[int | None]]) -> list[str]:
    """The jobs to ring: those with a follower whose read position is below the job's newest event id. A
    follower that has not read yet (None) needs no ring: it subscribed first and reads anyway."""
    return [job for job, at in positions.items()
            if job in latest and any(p is not None and p < latest[job] for p in at)]


def next_high(high: int | None, latest: Mapping[str, int]) -> int | None:
    """The newest event id seen so far (None until there is one)."""
    return max([*latest.values(), *([] if high is None else [high])], default=None)


class Watch:
    """One follower's watch of one job; ``position``: the newest event id it has read (None before its first
    read). ``close()`` ends it (more than once is harmless)."""

    __slots__ = ("key", "position", "_watcher")

    def __init__(self, watcher: EventWatcher, key: str) -> None:
        self.key, self._watcher = key, watcher
        self.position: int | None = None

    def close(self) -> None:
        self._watcher._drop(self)


class EventWatcher:
    """One per process (per ``Database``): a thread that, while any job is watched, asks ``latest`` every
    ``interval_s`` for the newest event id of every job (one query for all) and rings the bell of each watched
    job that has a follower behind it; events committed elsewhere so reach followers within about
    ``interval_s``. Each tick re-reads the ``LAG`` ids below the highest seen: PostgreSQL takes ids from a
    sequence before commit, so a transaction may commit an id lower than one already seen. The thread stops
    after ``idle_exit_s`` with nothing watched and starts again with the next ``watch``."""

    LAG = 1000

    def __init__(self, bell: Bell, latest: LatestEvents, interval_s: float = 0.5, idle_exit_s: float = 5.0) -> None:
        self._bell, self._latest = bell, latest
        self.interval_s, self.idle_exit_s = interval_s, idle_exit_s
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._high: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # queries made: what the tests read to prove one query per tick for every job and none while idle
        self.ticks = 0

    @property
    def watched(self) -> dict[str, int]:
        """{job id: number of followers}: what the tests read to prove one watch per job (however many streams
        follow it) and that a stream that ended, or whose client went away, is no longer watched."""
        with self._lock:
            return {key: len(ws) for key, ws in self._watches.items()}

    def watch(self, key: str) -> Watch:
        """Watch ``key`` (a job id) until the returned ``Watch`` is closed."""
        w = Watch(self, key)
        with self._lock:
            self._watches.setdefault(key, set()).add(w)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="event-watcher", daemon=True)
                self._thread.start()
        return w

    def _drop(self, w: Watch) -> None:
        with self._lock:
            ws = self._watches.get(w.key)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._watches[w.key]

    def tick(self) -> list[str]:
        """One look: ring (and return) the watched jobs that have a follower behind their newest event."""
        with self._lock:
            if not self._watches:
                return []
        latest = self._latest(self._high, self.LAG)
        self.ticks += 1
        self._high = next_high(self._high, latest)
        with self._lock:  # positions read after the query: a follower that caught up meanwhile needs no ring
            positions = {key: [w.position for w in ws] for key, ws in self._watches.items()}
        ring = behind(latest, positions)
        if ring:
            self._bell.ring(ring)
        return ring

    def _run(self) -> None:
        idle_since: float | None = None
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                if self._watches:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self.idle_exit_s:
                    self._thread = None
                    return
            try:
                self.tick()
                failures = 0
            except Exception as exc:  # a database blip: followers still read at their safety interval
                failures += 1
                (log.warning if failures == 1 else log.debug)("event watcher: %s (retrying)", exc)
            self._stop.wait(min(self.interval_s * 2 ** min(failures, 4), 5.0) if failures else self.interval_s)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
