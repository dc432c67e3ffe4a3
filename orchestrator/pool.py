"""The ComfyUI servers the orchestrator dispatches to, and what each one can run.

The walking skeleton knows model files per server (``/models/{folder}``) so that a job that needs a
model no server has is refused before dispatch; node-class routing, health and affinity grow here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from orchestrator.comfy.client import ComfyClient, ComfyError
from orchestrator.errors import Unavailable

ModelRef = tuple[str, str]  # (folder, file)


@dataclass
class Server:
    url: str
    client: ComfyClient
    models_ttl_s: float = 15.0
    _models: dict[str, tuple[float, set[str]]] = field(default_factory=dict)
    _version: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def models(self, folder: str, fresh: bool = False) -> set[str]:
        with self._lock:
            cached = self._models.get(folder)
            if cached and not fresh and time.monotonic() - cached[0] < self.models_ttl_s:
                return cached[1]
        names = set(self.client.models(folder))
        with self._lock:
            self._models[folder] = (time.monotonic(), names)
        return names

    def missing(self, refs: set[ModelRef], fresh: bool = False) -> list[ModelRef]:
        return sorted(ref for ref in refs if ref[1] not in self.models(ref[0], fresh))

    @property
    def comfy_version(self) -> str | None:
        if self._version is None:
            try:
                self._version = self.client.system_stats()["system"].get("comfyui_version")
            except (ComfyError, KeyError):
                return None
        return self._version


class Pool:
    def __init__(self, urls: list[str]) -> None:
        self.servers = [Server(url.rstrip("/"), ComfyClient(url)) for url in urls]

    def close(self) -> None:
        for s in self.servers:
            s.client.close()

    def check_runnable(self, refs: set[ModelRef]) -> None:
        """Raise Unavailable naming what is missing when no server has every model the job loads."""
        if not self.servers:
            raise Unavailable("no ComfyUI server is configured")
        reports = []
        for server in self.servers:
            try:
                missing = server.missing(refs)
            except ComfyError as exc:
                reports.append(f"{server.url}: unreachable ({exc.message})")
                continue
            if not missing:
                return
            reports.append(f"{server.url} lacks " + ", ".join(
                f"{f}/{n} (it has: {', '.join(sorted(server.models(f))[:10]) or 'none'})" for f, n in missing))
        raise MissingModels("no server can run this job: " + "; ".join(reports))


class MissingModels(Unavailable):
    status = 422
    title = "Missing model"
