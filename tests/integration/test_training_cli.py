"""The training commands as a user runs them: datasets build, train, a `medialab trainer` process pulling from
`medialab serve` over HTTP, jobs watch, models list|withdraw|approve (sd-scripts replaced by the protocol's
test device, see fake_sd_scripts/train_network.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from orchestrator.comfy.worker import free_port
from tests.integration.test_training import BASE, FAKE_SD_SCRIPTS
from tests.unit.test_trainer_claims import noise_png


def test_train_with_a_trainer_process(tmp_path: Path, comfy_url: str) -> None:
    home = tmp_path / ".medialab"
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / BASE).write_bytes(b"\x00" * 1024)
    env_extra = {"MEDIALAB_MODELS_DIR": str(models), "MEDIALAB_LOCAL_TRAINER": "false",
                 "MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(home, args, env_extra, timeout)

    assert cli("init").returncode == 0
    key = re.search(r"(mlk_\S+)", cli("keys", "create", "--role", "train", "--name", "gpu-host").stdout).group(1)
    frames = []
    for i in range(5):
        frames += ["-i", str(tmp_path / f"f{i}.png")]
        (tmp_path / f"f{i}.png").write_bytes(noise_png(i))
    built = cli("datasets", "build", "hero", "--trigger", "mlchar", *frames, "--caption-template",
                "photo of {trigger}", "--resolution", "64")
    assert built.returncode == 0, built.stdout + built.stderr
    dataset = re.search(r"dataset (\w{32}) hero v1: 5 images at 64 px", built.stdout).group(1)
    said = " ".join(built.stdout.split())
    assert "sd15-character trains at 512 px: train this dataset with --set resolution=64" in said
    mismatch = cli("train", "--dataset", dataset, "--base", BASE, "--no-watch")  # the preset's 512 px
    said = " ".join(mismatch.stderr.split())
    assert mismatch.returncode == 1 and "prepared at 64 px but the spec trains at 512 px" in said, said
    assert "--set resolution=64" in said and "medialab datasets build hero --resolution 512" in said
    bad = cli("train", "--dataset", dataset, "--base", BASE, "--set", "resolution=64", "--set", "network_dim=0")
    assert bad.returncode == 1 and "network_dim" in bad.stderr
    queued = cli("train", "--dataset", dataset, "--base", BASE, "--trigger", "mlchar", "--set", "resolution=64",
                 "--set", "max_train_steps=4", "--set", "save_every_n_steps=2", "--set", "sample_every_n_steps=2",
                 "--no-watch")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    job = re.search(r"queued training job (\w{32})", queued.stdout).group(1)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    env.update(env_extra, MEDIALAB_HOME=str(home), COLUMNS="200")
    serve = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--port", str(port)], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and serve.poll() is None, "serve did not start"
            time.sleep(0.3)
        trainer = _run(home, ("trainer", "--url", f"http://127.0.0.1:{port}", "--key", key, "--name", "gpu-host",
                              "--sd-scripts", str(FAKE_SD_SCRIPTS), "--python", sys.executable, "--cpu", "--once"),
                       env_extra, 120)
        assert trainer.returncode == 0, trainer.stdout + trainer.stderr
        assert f"job {job} done" in trainer.stdout
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
    watched = cli("jobs", "watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "SUCCEEDED training finished" in watched.stdout and "registered hero-v1.safetensors" in watched.stdout
    assert "sample stored" in watched.stdout and "lora application/octet-stream artifact" in watched.stdout
    listed = cli("models", "list")
    assert "hero-v1.safetensors" in listed.stdout and "approved" in listed.stdout
    assert cli("models", "withdraw", "hero").returncode == 0
    shown = json.loads(cli("models", "show", "hero@v1").stdout)
    assert shown["state"] == "withdrawn" and shown["ss_metadata"]["ss_steps"] == "4"
    assert "approved" in cli("models", "approve", "hero").stdout


def _run(home: Path, args: tuple[str, ...], extra: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    env.update(extra, MEDIALAB_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)
