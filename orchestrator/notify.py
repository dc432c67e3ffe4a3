"""In-process notifications: a committed change to a job rings its bell, so whoever follows it here
(the SSE stream of the job, the dispatcher for newly queued jobs) wakes at once instead of at its next poll.

The database stays the truth: a ring only says "look now". Changes made by other processes (replicas, the
CLI) ring nothing here, so every follower keeps polling as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)
QUEUED = "queued"  # rung when any job (re-)enters QUEUED


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

    def __init__(self, bell: Bell | None, key: str) -> None:
        self._bell, self._key = bell, key
        self._event = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> AsyncWaiter:
        if self._bell is not None:
            loop = asyncio.get_running_loop()
            self._unsubscribe = self._bell.subscribe(self._key, lambda: loop.call_soon_threadsafe(self._event.set))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unsubscribe:
            self._unsubscribe()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """True when rung, False when ``timeout`` passed (poll anyway: another process may have written)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
