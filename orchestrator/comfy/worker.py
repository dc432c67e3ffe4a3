"""A local ComfyUI worker: the real ComfyUI runtime started as a subprocess on this machine.

Used when no pool is configured (the embedded default) and by the tests. The orchestrator starts it,
waits until it answers, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from orchestrator.core.errors import Unavailable

NODE_PACK = Path(__file__).resolve().parents[2] / "custom_nodes"
MODEL_FOLDERS = ["checkpoints", "loras", "vae", "clip", "clip_vision", "upscale_models", "embeddings",
                 "controlnet", "ipadapter", "insightface", "unet", "diffusion_models", "text_encoders",
                 "facerestore_models"]


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a process started in a session of its own (``start_new_session``) with everything it started: ``sig``
    to the group, then SIGKILL when it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()


class LocalWorker:
    def __init__(self, runtime: Path, models_dir: Path, base_dir: Path, port: int | None = None,
                 device: str = "auto", start_timeout_s: float = 180.0, env: dict[str, str] | None = None,
                 node_pack: bool = True, extra_args: list[str] | None = None,
                 extra_packs: list[Path] | None = None) -> None:
        self.runtime = runtime.resolve()
        self.models_dir = models_dir.resolve()
        self.base_dir = base_dir.resolve()
        self.port = port or free_port()
        self.device = device
        self.start_timeout_s = start_timeout_s
        self.env = env or {}
        self.node_pack = node_pack
        self.extra_args = extra_args or []
        self.extra_packs = extra_packs or []  # more node pack folders to link into custom_nodes
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(self.runtime / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--extra-model-paths-config",
               str(self._model_paths_config()), "--disable-auto-launch",
               "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}"]
        if self.device == "cpu" or (self.device == "auto" and not has_gpu()):
            cmd.append("--cpu")
        return cmd + self.extra_args

    def _model_paths_config(self) -> Path:
        path = self.base_dir / "extra_model_paths.yaml"
        lines = ["medialab:", f"  base_path: {self.models_dir}"]
        lines += [f"  {folder}: {folder}" for folder in MODEL_FOLDERS]
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> LocalWorker:
        if not (self.runtime / "main.py").exists():
            raise Unavailable(f"no ComfyUI runtime at {self.runtime}: run scripts/setup.sh first")
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self._reap_orphan()
        pack = self.base_dir / "custom_nodes" / "medialab"
        if self.node_pack and not pack.exists():
            pack.symlink_to(NODE_PACK, target_is_directory=True)
        faces = self.base_dir / "models" / "insightface"  # IPAdapter_plus reads <models_dir>/insightface only,
        if (self.models_dir / "insightface").is_dir() and not faces.exists():  # never extra_model_paths
            faces.parent.mkdir(parents=True, exist_ok=True)
            faces.symlink_to(self.models_dir / "insightface", target_is_directory=True)
        for extra in self.extra_packs:
            link = self.base_dir / "custom_nodes" / extra.name
            if not link.exists():
                link.symlink_to(extra.resolve(), target_is_directory=True)
        log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")} | self.env
        self.proc = subprocess.Popen(self.command(), cwd=self.runtime, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise Unavailable(f"local ComfyUI exited with {self.proc.returncode} at start; "
                                  f"log {self.log_path}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    self.pid_path.write_text(str(self.proc.pid))
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise Unavailable(f"local ComfyUI did not answer within {self.start_timeout_s:.0f}s; log {self.log_path}")

    @property
    def pid_path(self) -> Path:
        return self.base_dir / "comfyui.pid"

    def _reap_orphan(self) -> None:
        """Kill a worker of this folder left running by an orchestrator that was killed (kill -9)."""
        try:
            pid = int(self.pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return
        if "main.py" in cmdline and str(self.base_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        self.pid_path.unlink(missing_ok=True)
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
