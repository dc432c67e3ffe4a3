"""The CLI as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import FIXTURE_MODEL, png_bytes


def medialab(home: Path, *args: str, servers: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    env.update(MEDIALAB_HOME=str(home), COLUMNS="200")
    if servers:
        env["MEDIALAB_COMFY_SERVERS"] = servers
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_run_starts_its_own_worker_and_prints_the_output(tmp_path: Path, comfy_url: str) -> None:
    """The README's run command: no pool configured, so a local ComfyUI is started and stopped."""
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(64, 48))
    home = tmp_path / ".medialab"
    init = medialab(home, "init")
    assert init.returncode == 0, init.stderr
    assert "first admin API key" in init.stdout and "mlk_" in init.stdout
    r = medialab(home, "run", "upscale-esrgan", "--input", str(frame), "--set", f"model={FIXTURE_MODEL}",
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCEEDED" in r.stdout and "256x192 image/png" in r.stdout
    copy = next((tmp_path / "out").rglob("*.png"))
    assert f"copy:   {copy}" in r.stdout
    with Image.open(copy) as im:
        assert im.size == (256, 192)
    listed = medialab(home, "jobs", "list")
    assert "SUCCEEDED" in listed.stdout and "upscale-esrgan@v2" in listed.stdout
    log = (home / "worker" / "comfyui.log").read_text()
    url = re.search(r"To see the GUI go to: (http://\S+)", log).group(1)  # the worker really ran...
    with pytest.raises(httpx.ConnectError):  # ...and was stopped at the end
        httpx.get(url, timeout=2)
    assert medialab(home, "templates", "show", "upscale-esrgan").returncode == 0


def test_run_errors_are_clear(tmp_path: Path, comfy_url: str) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes())
    home = tmp_path / ".medialab"
    r = medialab(home, "run", "upscale-esrgan", "--input", str(frame), "--set", "model=missing.pth",
                 servers=f'["{comfy_url}"]')
    assert r.returncode == 1
    assert "upscale_models/missing.pth" in r.stderr
    r = medialab(home, "run", "nope", "--input", str(frame))
    assert r.returncode == 1 and "unknown template 'nope'" in r.stderr
    r = medialab(home, "run", "upscale-esrgan", "--input", str(tmp_path / "absent.png"))
    assert r.returncode == 1 and "no such file" in r.stderr
    r = medialab(home, "keys", "create", "--role", "wizard")
    assert r.returncode == 1 and "unknown role" in r.stderr


def test_a_worker_orphaned_by_a_killed_orchestrator_is_reaped(tmp_path: Path, comfy_url: str) -> None:
    """A local worker outlives an orchestrator killed with -9; the next start in that folder kills it."""
    from orchestrator.comfy.worker import LocalWorker
    from tests.conftest import MODELS, RUNTIME

    first = LocalWorker(RUNTIME, MODELS, tmp_path / "worker", device="cpu").start()
    orphan = first.proc.pid  # its orchestrator "dies" here: nobody calls stop()
    second = LocalWorker(RUNTIME, MODELS, tmp_path / "worker", device="cpu").start()
    try:
        assert not Path(f"/proc/{orphan}").exists() or first.proc.poll() is not None
        assert httpx.get(f"{second.url}/system_stats").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{first.url}/system_stats", timeout=2)
    finally:
        second.stop()
        first.kill()
