"""A real ``comfy-api-proxy`` 0.1.6 subprocess (the Comfy API v2 in front of a ComfyUI) for tests: start, stop,
kill -9 and start again on the same port and state directory (``--state-dir`` keeps its jobs, idempotency keys
and asset index in SQLite across restarts). The binary lives in ``.runtime/proxy-venv`` (scripts/setup.sh)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from orchestrator.comfy.worker import free_port
from orchestrator.settings import PROJECT_ROOT

BINARY = PROJECT_ROOT / ".runtime" / "proxy-venv" / "bin" / "comfy-api-proxy"
MISSING = "run scripts/setup.sh: it installs comfy-api-proxy into .runtime/proxy-venv"


def proxy_binary() -> Path | None:
    """The comfy-api-proxy executable, or None when it is not installed (tests skip with ``MISSING``)."""
    return BINARY if BINARY.is_file() and os.access(BINARY, os.X_OK) else None


class ApiProxy:
    def __init__(self, comfy_url: str, state_dir: Path, token: str | None = None, port: int | None = None) -> None:
        binary = proxy_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.comfy_url = comfy_url.rstrip("/")
        self.state_dir = Path(state_dir)
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.state_dir / "proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ApiProxy:
        """Start (or start again, same port and state) and wait until ``/api/v2/health`` answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary), "run", "--comfyui", self.comfy_url, "--host", "127.0.0.1", "--port", str(self.port),
               "--state-dir", str(self.state_dir)]
        if self.token:
            cmd += ["--token", self.token]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"comfy-api-proxy exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"comfy-api-proxy did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown (what a crash looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ApiProxy:
        self.kill()
        return self.start()

    def __enter__(self) -> ApiProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
