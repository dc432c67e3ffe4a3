"""`medialab submit` as an API client: a service (`medialab serve`) in another process, the CLI in a third one
with its own (empty) MEDIALAB_HOME, talking to it only over HTTP with an API key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from orchestrator.comfy.worker import free_port, stop_group
from tests.conftest import FIXTURE_MODEL, png_bytes


def medialab(home: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, with no MEDIALAB_* of this process's environment."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    full.update(env or {}, MEDIALAB_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=home.parent, env=full,
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def served(home: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`medialab serve` in its own process group on a free port, until the block ends; yields its URL."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    full.update(env or {}, MEDIALAB_HOME=str(home), COLUMNS="200")
    log = (home.parent / f"serve-{port}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--port", str(port), *options],
                            cwd=home.parent, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (home.parent / f"serve-{port}.log").read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.3)
        yield url
    finally:
        stop_group(proc)
        log.close()


def service_with_key(tmp_path: Path, *roles: str) -> tuple[Path, str]:
    """A service's home with its database and a key holding ``roles``."""
    home = tmp_path / "service" / ".medialab"
    home.parent.mkdir(parents=True)
    assert medialab(home, "init").returncode == 0
    args = [a for role in roles for a in ("--role", role)]
    created = medialab(home, "keys", "create", *args, "--name", "operator")
    assert created.returncode == 0, created.stderr
    return home, re.search(r"(mlk_\S+)", created.stdout).group(1)


def test_submit_to_a_service_in_another_process(tmp_path: Path, comfy_url: str) -> None:
    """Upload, submit, follow the events, download the output: nothing of the operator's own home is used."""
    home, key = service_with_key(tmp_path, "run", "export")
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(64, 48))
    with served(home, env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        r = medialab(operator, "submit", "upscale-esrgan", "--input", str(frame), "--set", f"model={FIXTURE_MODEL}",
                     "--out", str(tmp_path / "out"), env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key})
        assert r.returncode == 0, r.stdout + r.stderr
        job = re.search(rf"queued job (\w{{32}}) on {url}", r.stdout).group(1)
        assert "SUCCEEDED" in r.stdout and "256x192 image/png" in r.stdout
        copy = next((tmp_path / "out" / job[:8]).glob("*.png"))
        assert f"copy:   {copy}" in r.stdout
        with Image.open(copy) as im:
            assert im.size == (256, 192)
        assert not operator.exists()  # no database, no store of its own

        config = tmp_path / "config.toml"  # the same through a profile, without waiting; twice with one key
        config.write_text(f'[profiles.studio]\nurl = "{url}"\napi_key = "{key}"\n')
        ids = []
        for _ in range(2):
            r = medialab(operator, "submit", "upscale-esrgan", "--input", str(frame), "--set",
                         f"model={FIXTURE_MODEL}", "--no-watch", "--profile", "studio", "--idempotency-key", "f-1",
                         env={"MEDIALAB_CONFIG_FILE": str(config)})
            assert r.returncode == 0, r.stdout + r.stderr
            ids.append(re.search(rf"queued job (\w{{32}}) on {url}", r.stdout).group(1))
        assert ids[0] == ids[1] != job

        wrong = medialab(operator, "submit", "upscale-esrgan", "--input", str(frame),
                         env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": "mlk_not_a_key"})
        assert wrong.returncode == 1 and "unknown or revoked API key" in wrong.stderr, wrong.stderr
        none = medialab(operator, "submit", "upscale-esrgan", env={"MEDIALAB_URL": url})
        assert none.returncode == 1 and "an API key is required" in none.stderr
        assert "set MEDIALAB_API_KEY" in none.stderr
        bad = medialab(operator, "submit", "upscale-esrgan", "--input", str(frame), "--set", "model=missing.pth",
                       env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key})
        assert bad.returncode == 1 and "lacks upscale_models/missing.pth" in bad.stderr, bad.stderr
        assert "queued" not in bad.stdout


def test_a_submit_with_no_service_says_so_at_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "operator").mkdir()
    started = time.monotonic()
    r = medialab(tmp_path / "operator" / ".medialab", "submit", "upscale-esrgan", "--set", "scale=2",
                 env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": "mlk_x"}, timeout=60)
    assert r.returncode == 1
    assert f"no Media Lab service at {url}: start one with `medialab serve`, or set MEDIALAB_URL" in r.stderr
    assert time.monotonic() - started < 30  # the start of Python and the CLI's imports; no waiting


def test_a_submit_that_nothing_dispatches_says_so(tmp_path: Path, comfy_url: str) -> None:
    home, key = service_with_key(tmp_path, "run")
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(32, 24))
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    with served(home, "--no-dispatch", env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "dispatching": False}
        r = medialab(operator, "submit", "upscale-esrgan", "--input", str(frame), "--set", f"model={FIXTURE_MODEL}",
                     env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        job = re.search(r"queued job (\w{32})", r.stdout).group(1)
        assert f"nothing dispatches jobs on {url} (served with --no-dispatch): job {job} stays QUEUED" in r.stderr
        queued = httpx.get(f"{url}/v1/jobs/{job}", headers={"X-API-Key": key}).json()
        assert queued["state"] == "QUEUED"
