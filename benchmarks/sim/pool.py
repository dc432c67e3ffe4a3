"""Starts the simulated servers (``server.py``) in a process of their own and reads their figures back."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class SimPool:
    """``servers`` simulated ComfyUI servers; ``models`` maps model file -> load cost (simulated s)."""

    def __init__(self, servers: int, models: dict[str, float], time_scale: float, workdir: Path,
                 progress_events: int = 5) -> None:
        self.servers, self.models, self.time_scale = servers, models, time_scale
        self.workdir, self.progress_events = workdir, progress_events
        self.proc: subprocess.Popen[str] | None = None
        self.urls: list[str] = []

    def start(self, timeout_s: float = 60.0) -> SimPool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "sim.json"
        config.write_text(json.dumps({"models": self.models}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sim.server", "--servers", str(self.servers), "--config", str(config),
             "--time-scale", str(self.time_scale), "--progress-events", str(self.progress_events)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=(self.workdir / "sim.log").open("w"), text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].strip():
            self.stop()
            raise RuntimeError(f"simulated pool did not start; log {self.workdir / 'sim.log'}")
        self.urls = json.loads(line[0])["urls"]
        return self

    def stats(self) -> list[dict[str, Any]]:
        with httpx.Client(timeout=30) as c:
            return [c.get(f"{u}/sim/stats").json() for u in self.urls]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
