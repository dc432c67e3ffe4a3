"""Wires settings into the running parts: database, object store, pool (or a local worker), dispatcher.

The API server and the CLI both build one of these, so they share one code path.
"""

from __future__ import annotations

import logging

from orchestrator import service
from orchestrator.comfy.worker import LocalWorker
from orchestrator.db import Database
from orchestrator.executor import Executor
from orchestrator.pool import Pool
from orchestrator.scheduler import Dispatcher
from orchestrator.settings import Settings
from orchestrator.templates import scan_library
from storage import LocalDiskStore

log = logging.getLogger(__name__)


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.database)
        self.store = LocalDiskStore(settings.objects)
        with self.db.session() as s:
            service.sync_templates(s, scan_library(settings.templates))
        self.executor = Executor(self.db, self.store, settings)
        self.worker: LocalWorker | None = None
        self.pool: Pool | None = None
        self.dispatcher: Dispatcher | None = None

    def start_pool(self) -> Pool:
        """The configured servers, or a local ComfyUI worker started now (stopped by close())."""
        if self.pool is None:
            urls = list(self.settings.comfy_servers)
            if not urls:
                s = self.settings
                self.worker = LocalWorker(s.comfy_runtime, s.models_dir, s.home / "worker", port=s.worker_port,
                                          device=s.worker_device, start_timeout_s=s.worker_start_timeout_s)
                log.info("no ComfyUI pool configured: starting a local worker on %s", self.worker.url)
                self.worker.start()
                urls = [self.worker.url]
            self.pool = Pool(urls)
        return self.pool

    def start_dispatcher(self) -> Dispatcher:
        self.dispatcher = Dispatcher(self.db, self.start_pool(), self.executor)
        self.dispatcher.start()
        return self.dispatcher

    def close(self) -> None:
        if self.dispatcher:
            self.dispatcher.stop()
        if self.pool:
            self.pool.close()
        if self.worker:
            self.worker.stop()
        self.db.engine.dispose()
