"""Dispatch: one loop per server claims the next QUEUED job and runs it there."""

from __future__ import annotations

import logging
import threading

from orchestrator import service
from orchestrator.db import Database
from orchestrator.executor import Executor
from orchestrator.pool import Pool, Server

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, db: Database, pool: Pool, executor: Executor, poll_s: float = 0.5) -> None:
        self.db = db
        self.pool = pool
        self.executor = executor
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for server in self.pool.servers:
            t = threading.Thread(target=self._loop, args=(server,), name=f"dispatch {server.url}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    def _loop(self, server: Server) -> None:
        while not self._stop.is_set():
            try:
                with self.db.session() as s:
                    job = service.claim_next(s)
                if job is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self.executor.run(job.id, server)
            except Exception:  # keep dispatching whatever one job did
                log.exception("dispatch loop on %s", server.url)
                self._stop.wait(self.poll_s)
