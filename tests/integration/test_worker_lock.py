"""The worker lock end to end: the bootstrap script offline (a local mirror and a local git repository as
a node pack), a real ComfyUI started on what it installed, and `medialab servers check` / the API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, MODELS, RUNTIME
from tests.integration.conftest import Api
from tests.integration.test_cli import medialab

SCRIPT = PROJECT_ROOT / "scripts" / "bootstrap_worker.py"
FAKE_PACK = '''
class FakeLockNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"FakeLockNode": FakeLockNode}
'''


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(cwd), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Mirror:
    root: Path
    lock: Path
    first: str  # the locked commit of the fake pack
    second: str  # a later commit


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    """A mirror folder: a bare git repository holding a real (tiny) node pack with two commits, and model
    files; plus a lock that pins the pack's first commit (abbreviated) and those models."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "mirror"
    work = tmp_path / "pack-src"
    work.mkdir()
    (work / "__init__.py").write_text(FAKE_PACK)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    first = git(work, "rev-parse", "HEAD")
    (work / "README").write_text("second\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "second")
    second = git(work, "rev-parse", "HEAD")
    (root / "packs").mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(work), str(root / "packs" / "FakePack.git"))

    models = root / "models"
    (models / "upscale_models").mkdir(parents=True)
    x4 = MODELS / "upscale_models" / FIXTURE_MODEL
    if x4.exists():
        shutil.copy(x4, models / "upscale_models" / FIXTURE_MODEL)
    else:  # the bootstrap tests need no real model; the server test skips without one
        (models / "upscale_models" / FIXTURE_MODEL).write_bytes(os.urandom(4096))
    (models / "unknown.bin").write_bytes(os.urandom(300_000))  # found by the URL's file name
    (models / "fake47.pth").write_bytes(b"rife" * 1000)
    with zipfile.ZipFile(models / "facepack.zip", "w") as z:
        z.writestr("facepack/det.onnx", b"detector")
        z.writestr("facepack/rec.onnx", b"recognizer")
    lock = tmp_path / "test.lock.toml"
    lock.write_text(f'''
[comfyui]
version = "0.3.75"

[[pack]]
name = "FakePack"
git = "https://example.invalid/FakePack.git"
commit = "{first[:10]}"
node_classes = ["FakeLockNode"]

[[pack]]
name = "medialab"
path = "custom_nodes"
version = "0.2.0"
node_classes = ["MediaLabSaveImage", "MediaLabParamInt"]

[[model]]
name = "{FIXTURE_MODEL}"
folder = "upscale_models"
url = "https://example.invalid/{FIXTURE_MODEL}"
sha256 = "{sha(models / "upscale_models" / FIXTURE_MODEL)}"
size = {(models / "upscale_models" / FIXTURE_MODEL).stat().st_size}

[[model]]
name = "unknown.bin"
folder = "checkpoints"
url = "https://example.invalid/files/unknown.bin?download=true"
sha256 = ""

[[model]]
name = "fake47.pth"
pack = "FakePack"
folder = "ckpts/rife"
url = "https://example.invalid/fake47.pth"
sha256 = "{sha(models / "fake47.pth")}"

[[model]]
name = "facepack"
folder = "insightface/models"
archive = "zip"
url = "https://example.invalid/facepack.zip"
sha256 = "{sha(models / "facepack.zip")}"
''')
    return Mirror(root, lock, first, second)


def bootstrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_bootstrap_from_a_local_mirror(tmp_path: Path, mirror: Mirror) -> None:
    comfy, models = tmp_path / "comfy", tmp_path / "models"
    common = ["--lock", str(mirror.lock), "--comfyui", str(comfy), "--models", str(models), "--from", str(mirror.root)]

    plan = bootstrap(*common, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "pack FakePack: would clone" in plan.stdout and "would fetch" in plan.stdout
    assert not comfy.exists() and not models.exists()
    pip = bootstrap(*common, "--only", "python", "--dry-run")
    assert pip.returncode == 0 and "would run: " in pip.stdout and "-m pip install" in pip.stdout

    r = bootstrap(*common)
    assert r.returncode == 0, r.stdout + r.stderr
    pack = comfy / "custom_nodes" / "FakePack"
    assert git(pack, "rev-parse", "HEAD") == mirror.first  # the locked (abbreviated) commit, not the newest
    assert (comfy / "custom_nodes" / "medialab" / "packs.py").is_file()  # our pack, copied
    assert sha(models / "upscale_models" / FIXTURE_MODEL) == sha(mirror.root / "models" / "upscale_models"
                                                                     / FIXTURE_MODEL)
    assert (pack / "ckpts" / "rife" / "fake47.pth").read_bytes() == b"rife" * 1000  # inside the pack
    face = comfy / "models" / "insightface" / "models" / "facepack"  # always under the ComfyUI root
    assert (face / "det.onnx").read_bytes() == b"detector" and (face / "rec.onnx").is_file()
    # a model without sha256 in the lock: kept, with a warning and the computed hash recorded
    unknown = models / "checkpoints" / "unknown.bin"
    assert "WARNING" in r.stderr and "checkpoints/unknown.bin" in r.stderr and sha(unknown) in r.stderr
    recorded = json.loads((models / ".medialab-lock-hashes.json").read_text())
    assert recorded["checkpoints/unknown.bin"] == {"sha256": sha(unknown), "size": 300_000, "verified": False,
                                                   "url": "https://example.invalid/files/unknown.bin?download=true"}
    assert recorded[f"upscale_models/{FIXTURE_MODEL}"]["verified"] is True
    paths = (comfy / "extra_model_paths.yaml").read_text()
    assert f"base_path: {models.resolve()}" in paths and "  upscale_models: upscale_models" in paths
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.unpacking"))

    again = bootstrap(*common)  # idempotent: everything is in place
    assert again.returncode == 0, again.stderr
    assert "FakePack: at " in again.stdout and "sha256 ok" in again.stdout and "would" not in again.stdout
    assert "WARNING" not in again.stderr

    # a checkout that moved on is put back on the locked commit
    git(pack, "checkout", "-q", mirror.second)
    assert bootstrap(*common, "--only", "packs").returncode == 0
    assert git(pack, "rev-parse", "HEAD") == mirror.first


def test_bootstrap_resumes_and_never_leaves_a_bad_file(tmp_path: Path, mirror: Mirror) -> None:
    comfy, models = tmp_path / "comfy", tmp_path / "models"
    common = ["--lock", str(mirror.lock), "--comfyui", str(comfy), "--models", str(models), "--from", str(mirror.root),
              "--only", "models"]
    source = mirror.root / "models" / "upscale_models" / FIXTURE_MODEL
    data = source.read_bytes()
    part = models / "upscale_models" / f".{FIXTURE_MODEL}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])  # an interrupted download
    (comfy / "custom_nodes" / "FakePack").mkdir(parents=True)  # --only models: the pack folder is there
    r = bootstrap(*common)
    assert r.returncode == 0, r.stderr
    assert (models / "upscale_models" / FIXTURE_MODEL).read_bytes() == data and not part.exists()
    assert not (comfy / "custom_nodes" / "FakePack" / ".git").exists()  # packs were not touched

    # the mirror now serves different bytes: the sha256 check fails, nothing lands under the real name
    (models / "upscale_models" / FIXTURE_MODEL).unlink()
    source.write_bytes(data[:100])  # a download that ended early is kept for the next run to resume
    short = bootstrap(*common)
    assert short.returncode == 1 and "run again to resume" in short.stderr and part.stat().st_size == 100
    part.unlink()
    source.write_bytes(b"corrupted" + data[9:])
    bad = bootstrap(*common)
    assert bad.returncode == 1
    assert f"upscale_models/{FIXTURE_MODEL}: sha256" in bad.stderr and "is not the lock's" in bad.stderr
    assert not (models / "upscale_models" / FIXTURE_MODEL).exists() and not part.exists()

    missing = bootstrap("--lock", str(mirror.lock), "--comfyui", str(comfy), "--from", str(tmp_path / "empty"),
                        "--only", "packs")
    assert missing.returncode == 1 and "not in the mirror" in missing.stderr


@pytest.fixture
def bootstrapped_server(tmp_path: Path, mirror: Mirror) -> Iterator[tuple[str, Mirror, Path]]:
    """A real ComfyUI 0.3.75 on the CPU whose custom nodes and models the bootstrap script installed."""
    from orchestrator.comfy.worker import LocalWorker

    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    comfy, models = tmp_path / "comfy", tmp_path / "models"
    r = bootstrap("--lock", str(mirror.lock), "--comfyui", str(comfy), "--models", str(models),
                  "--from", str(mirror.root))
    assert r.returncode == 0, r.stderr
    worker = LocalWorker(RUNTIME, models, comfy, device="cpu").start()
    try:
        yield worker.url, mirror, comfy
    finally:
        worker.stop()


def test_servers_check_against_a_bootstrapped_server(tmp_path: Path, bootstrapped_server: tuple) -> None:
    url, mirror, comfy = bootstrapped_server
    home = tmp_path / ".medialab"
    assert medialab(home, "servers", "add", url, "--name", "boot").returncode == 0
    ok = medialab(home, "servers", "check", "--lock", str(mirror.lock), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    [report] = json.loads(ok.stdout)
    assert report["ok"] and report["comfy_version"] == "0.3.75"
    assert report["missing_packs"] == [] and report["missing_models"] == [] and report["mismatches"] == []
    assert report["unverified"] == ["insightface/models/facepack (the server does not list models/insightface/models)"]

    # the pack's checkout moves on: /medialab/info reads .git again, check names the commits
    git(comfy / "custom_nodes" / "FakePack", "checkout", "-q", mirror.second)
    moved = medialab(home, "servers", "check", "boot", "--lock", str(mirror.lock), "--json")
    assert moved.returncode == 1
    expected = f"FakePack at {mirror.second[:12]} (lock: {mirror.first[:10]})"
    assert json.loads(moved.stdout)[0]["mismatches"] == [expected]
    table = medialab(home, "servers", "check", "boot", "--lock", str(mirror.lock), "--no-refresh")
    assert table.returncode == 1 and "FakePack at" in table.stdout
    assert "does not match" in table.stdout and "0 of 1 server(s) match the lock; not: boot" in table.stdout


def test_servers_check_with_the_repository_lock(tmp_path: Path, comfy_url: str) -> None:
    """The shared CPU server has core ComfyUI 0.3.75 and our pack only: the third-party packs and the real
    models are reported missing, and the command fails."""
    home = tmp_path / ".medialab"
    r = medialab(home, "servers", "check", "--json", servers=f'["{comfy_url}"]')
    assert r.returncode == 1, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    assert not report["ok"] and report["comfy_version"] == "0.3.75"
    assert set(report["missing_packs"]) == {"ComfyUI-Frame-Interpolation", "ComfyUI_IPAdapter_plus"}
    assert "upscale_models/RealESRGAN_x4plus.pth" in report["missing_models"]
    assert not any(m.startswith("ComfyUI 0.3") for m in report["mismatches"])
    table = medialab(home, "servers", "check", servers=f'["{comfy_url}"]')
    assert table.returncode == 1 and "ComfyUI-Frame-Interpolation" in table.stdout
    assert "0 of 1 server(s) match the lock" in table.stdout


def test_the_check_api(api_paused: Api, comfy_url: str) -> None:
    api = api_paused
    reports = api.client.get("/v1/servers/check", headers=api.reader)
    assert reports.status_code == 200, reports.text
    [report] = reports.json()
    assert report["url"] == comfy_url and report["ok"] is False
    assert "ComfyUI_IPAdapter_plus" in report["missing_packs"]
    one = api.client.get(f"/v1/servers/{report['name']}/check", headers=api.reader)
    assert one.status_code == 200 and one.json()["missing_packs"] == report["missing_packs"]
    assert api.client.get("/v1/servers/nope/check", headers=api.reader).status_code == 404
    assert api.client.get("/v1/servers/check").status_code == 401
