"""Datasets, training jobs, trainers and the model registry through the real API and a real ComfyUI server.

The trainer runs part A's real runner. sd-scripts itself is replaced by ``fake_sd_scripts/train_network.py``,
a test device for the protocol (it writes real safetensors files and sd-scripts-style progress, but trains
nothing); the run with the real sd-scripts is ``test_training_e2e.py`` (needs MEDIALAB_SD_SCRIPTS_DIR).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.app import keys as key_app
from orchestrator.core.states import JobState
from orchestrator.settings import Settings
from orchestrator.training.runtime.trainer import HttpBackend, Trainer
from tests.conftest import MODELS, start_workers
from tests.integration.conftest import Api, make_api
from tests.integration.test_jobs_api import upload, wait
from tests.unit.test_trainer_claims import noise_png
from tests.unit.test_trainer_workdir import diffusers_folder, files_of

FAKE_SD_SCRIPTS = Path(__file__).parent / "fake_sd_scripts"
BASE = "fake_base.safetensors"
OPTIONS = {"resolution": 64, "max_train_steps": 6, "save_every_n_steps": 2, "sample_every_n_steps": 2,
           "max_data_loader_n_workers": 0}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ComfyUI server whose models folder is ours (the shared models path of the tests): it has the
    SD1.5-shaped fixture checkpoint and no LoRA yet."""
    models = tmp_path_factory.mktemp("shared-models")
    for folder, name in (("checkpoints", "tiny_sd15.safetensors"), ("upscale_models", "tiny_x4.safetensors")):
        if not (MODELS / folder / name).exists():
            pytest.skip(f"fixture model {folder}/{name} missing: run scripts/setup.sh")
        (models / folder).mkdir()
        (models / folder / name).symlink_to(MODELS / folder / name)
    (models / "loras").mkdir()
    (worker,) = start_workers(tmp_path_factory, 1, models=models)
    yield worker.url, models
    worker.stop()


@pytest.fixture
def training_settings(settings: Settings, lora_server: tuple[str, Path], tmp_path: Path) -> Settings:
    url, shared = lora_server
    orch_models = tmp_path / "orch-models"
    (orch_models / "checkpoints").mkdir(parents=True)
    (orch_models / "checkpoints" / BASE).write_bytes(b"\x00" * 4096)  # the fake script only checks it exists
    settings.comfy_servers = [url]
    settings.models_dir = orch_models
    settings.shared_models_dir = shared
    settings.local_trainer = False
    return settings


def train_key(api: Api) -> dict[str, str]:
    with api.client.app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "trainer", ["train"])
    return {"X-API-Key": key}


def http_trainer(api: Api, tmp_path: Path, name: str = "gpu-host-1") -> Trainer:
    backend = HttpBackend(None, train_key(api)["X-API-Key"], name, client=api.client)
    return Trainer(backend, workdir=tmp_path / name, sd_scripts_dir=FAKE_SD_SCRIPTS, python=sys.executable,
                   cpu=True, poll_s=0.2)


def build_dataset(api: Api, name: str = "hero") -> dict[str, Any]:
    ids = [upload(api, noise_png(i), f"frame{i}.png")["id"] for i in range(5)]
    r = api.client.post("/v1/datasets", headers=api.run, json={
        "name": name, "trigger": "mlchar", "images": ids, "caption_template": "photo of {trigger}, {caption}",
        "captions": {ids[0]: "in a red coat"}, "resolution": 64})
    assert r.status_code == 201, r.text
    return r.json()


def submit_training(api: Api, dataset: str, **options: Any) -> httpx.Response:
    return api.client.post("/v1/trainings", headers=api.run, json={
        "dataset": dataset, "base": BASE, "preset": "sd15-character", "trigger": "mlchar",
        "set": {**OPTIONS, **options}})


def events(api: Api, job_id: str) -> list[dict[str, Any]]:
    return api.client.get(f"/v1/jobs/{job_id}/events?follow=false", headers=api.reader).json()


def test_dataset_train_register_distribute_generate(training_settings: Settings, tmp_path: Path) -> None:
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api)
        assert ds["role"] == "dataset" and len(ds["input_artifacts"]) == 5 and ds["params"]["version"] == 1
        assert ds["params"]["captions"] == {"frame0": "photo of mlchar, in a red coat", **{
            f"frame{i}": "photo of mlchar" for i in range(1, 5)}}  # the user's caption in the template
        assert "dataset:hero" in ds["tags"]
        few = api.client.post("/v1/datasets", headers=api.run, json={
            "name": "hero", "trigger": "mlchar", "images": ds["input_artifacts"][:2], "resolution": 64,
            "caption_template": "{trigger}"})
        assert few.status_code == 422 and "at least 5" in few.json()["detail"]

        # every option is checked before the job is queued
        bad = submit_training(api, ds["id"], warp_speed=3)
        assert bad.status_code == 422 and "warp_speed: unknown training option" in bad.json()["detail"]
        bad = api.client.post("/v1/trainings", headers=api.run, json={"dataset": ds["id"], "base": "nope.safetensors",
                                                                      "set": OPTIONS})
        assert bad.status_code == 422 and "'nope.safetensors' is neither in" in bad.json()["detail"]
        assert api.client.post("/v1/trainings", headers=api.reader, json={}).status_code in (403, 422)

        r = submit_training(api, ds["id"])
        assert r.status_code == 201, r.text
        job = r.json()
        assert (job["kind"], job["state"], job["template"]) == ("training", "QUEUED", "train-lora")
        assert api.client.post("/v1/trainer/claim", headers=api.run, json={"trainer": "x"}).status_code == 403

        trainer = http_trainer(api, tmp_path)
        assert trainer.run_once() == job["id"]
        done = wait(api, job["id"])
        assert done["state"] == "SUCCEEDED", done["error"]
        assert [a["server"] for a in done["attempts"]] == ["trainer:gpu-host-1"]
        kinds = sorted(o["output_name"] for o in done["outputs"])
        assert kinds == ["checkpoint", "checkpoint", "lora", "sample", "sample", "sample"]
        assert all(o["input_artifacts"] == [ds["id"]] for o in done["outputs"])  # lineage to the dataset
        evs = events(api, job["id"])
        progress = [e["data"] for e in evs if e["kind"] == "progress"]
        assert progress and progress[-1]["step"] == 6 and progress[-1]["total"] == 6
        assert all(p["loss"] is not None for p in progress if p["step"])
        reasons = [e["reason"] for e in evs]
        assert any(r.startswith("sample stored") for r in reasons)
        assert any(r.startswith("checkpoint stored") for r in reasons)
        assert "registered hero-v1.safetensors (approved)" in reasons

        (model,) = api.client.get("/v1/models", headers=api.reader).json()
        assert (model["name"], model["version"], model["state"]) == ("hero", 1, "approved")
        assert model["base_model"] == BASE and model["trigger_words"] == ["mlchar"]
        assert model["dataset_artifact_id"] == ds["id"] and model["job_id"] == job["id"]
        assert model["ss_metadata"]["ss_network_dim"] == "16" and model["ss_metadata"]["ss_steps"] == "6"
        assert model["training"]["spec"]["network_dim"] == 16
        lora = next(o for o in done["outputs"] if o["output_name"] == "lora")
        assert model["sha256"] == lora["sha256"]

        # distributed to the shared models path and seen by the server and by placement
        server = api.client.app.state.ctx.pool.servers[0]
        assert "hero-v1.safetensors" in httpx.get(f"{server.url}/models/loras").json()
        assert "hero-v1.safetensors" in server.caps.models["loras"]
        assert model["distribution"]["servers"][server.name]["ok"] is True

        # a generation job uses it right away
        params = {"lora": "hero-v1.safetensors", "checkpoint": "tiny_sd15.safetensors", "steps": 1, "width": 64,
                  "height": 64, "prompt": "photo of mlchar person", "seed": 3}
        gen = api.client.post("/v1/jobs", headers=api.run, json={"template": "generate-lora", "params": params})
        assert gen.status_code == 201, gen.text
        out = wait(api, gen.json()["id"], timeout=300)
        assert out["state"] == "SUCCEEDED", out["error"]

        # withdrawn: refused at submit; approved again: accepted
        r = api.client.post("/v1/models/hero/withdraw", headers=api.admin)
        assert r.status_code == 200 and r.json()["state"] == "withdrawn"
        gen = api.client.post("/v1/jobs", headers=api.run, json={"template": "generate-lora", "params": params})
        assert gen.status_code == 422 and "hero-v1.safetensors is withdrawn" in gen.json()["detail"]
        assert api.client.post("/v1/models/hero@v1/approve", headers=api.run).status_code == 403
        assert api.client.post("/v1/models/hero@v1/approve", headers=api.admin).json()["state"] == "approved"
        assert api.client.post("/v1/jobs", headers=api.run,
                               json={"template": "generate-lora", "params": params}).status_code == 201


def _processes_under(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(folder) in cmdline:
                pids.append(int(entry.name))
    return pids


def test_cancel_reaches_the_trainer_and_stops_the_run(training_settings: Settings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api)
        job = submit_training(api, ds["id"], max_train_steps=300, save_every_n_steps=100,
                              sample_every_n_steps=100).json()
        trainer = http_trainer(api, tmp_path)
        runner = threading.Thread(target=trainer.run_once)
        runner.start()
        deadline = time.monotonic() + 60
        while not any(e["kind"] == "progress" and (e["data"] or {}).get("step") for e in events(api, job["id"])):
            assert time.monotonic() < deadline, "no progress from the trainer"
            time.sleep(0.2)
        r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.run)
        assert r.status_code == 200 and r.json()["cancel_requested"]
        final = wait(api, job["id"], timeout=60)
        runner.join(30)
        assert final["state"] == "CANCELLED"
        assert not runner.is_alive()
        assert _processes_under(tmp_path / "gpu-host-1") == []  # the whole process group is gone
        assert not [o for o in final["outputs"] if o["output_name"] == "lora"]
        assert api.client.get("/v1/models", headers=api.reader).json() == []
        assert list((tmp_path / "gpu-host-1" / "runs").iterdir()) == []  # the cancelled run's folder is gone


def test_a_diffusers_folder_base_reaches_a_remote_trainer(training_settings: Settings, tmp_path: Path) -> None:
    """Submit accepts a folder base only when a remote trainer can fetch it: it comes as a tar into the trainer's
    checkpoint cache; a folder with a link out of it is refused at submit and never served."""
    checkpoints = training_settings.models_dir / "checkpoints"
    folder = diffusers_folder(checkpoints / "sd15-folder")
    leaky = diffusers_folder(checkpoints / "sd15-leaky")
    (leaky / "unet" / "extra.bin").symlink_to(training_settings.home / "medialab.db")
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api)
        r = api.client.post("/v1/trainings", headers=api.run, json={
            "dataset": ds["id"], "base": "sd15-leaky", "preset": "sd15-character", "trigger": "mlchar",
            "set": OPTIONS})
        assert r.status_code == 422 and "unet/extra.bin is a link out of the folder" in r.json()["detail"]
        key = train_key(api)
        r = api.client.get("/v1/trainer/checkpoints/sd15-leaky", headers=key)
        assert r.status_code == 422 and "link out of the folder" in r.text
        # a resolution the dataset was not built at: both named, and the two ways out
        r = submit_training(api, ds["id"], resolution=128)
        assert r.status_code == 422 and "prepared at 64 px but the spec trains at 128 px" in r.json()["detail"]
        assert "--set resolution=64" in r.json()["detail"] and "--resolution 128" in r.json()["detail"]

        r = api.client.post("/v1/trainings", headers=api.run, json={
            "dataset": ds["id"], "base": "sd15-folder", "preset": "sd15-character", "trigger": "mlchar",
            "set": OPTIONS})
        assert r.status_code == 201, r.text
        trainer = http_trainer(api, tmp_path)  # no models folder: the base is downloaded
        assert trainer.run_once() == r.json()["id"]
        assert wait(api, r.json()["id"])["state"] == "SUCCEEDED"
        assert files_of(tmp_path / "gpu-host-1" / "checkpoints" / "sd15-folder") == files_of(folder)
        assert list((tmp_path / "gpu-host-1" / "runs").iterdir()) == []


def test_a_silent_trainer_loses_its_claim(training_settings: Settings) -> None:
    training_settings.trainer_lease_s = 1.0
    training_settings.lease_s = 1.5  # the lease loop runs every lease_s / 3
    training_settings.retry_base_delay_s = 0.1
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api)
        job = submit_training(api, ds["id"]).json()
        key = train_key(api)
        claim = api.client.post("/v1/trainer/claim", headers=key, json={"trainer": "dies"}).json()
        assert claim["job"]["id"] == job["id"] and claim["lease_s"] == 1.0
        deadline = time.monotonic() + 20
        while api.client.get(f"/v1/jobs/{job['id']}", headers=api.reader).json()["state"] != "QUEUED":
            assert time.monotonic() < deadline, "the claim was not taken back"
            time.sleep(0.2)
        assert any("trainer dies stopped reporting" in e["reason"] for e in events(api, job["id"]))
        late = api.client.post(f"/v1/trainer/attempts/{claim['attempt_id']}/heartbeat", headers=key,
                               json={"trainer": "dies", "events": []})
        assert late.status_code == 409 and "no longer held" in late.json()["detail"]
        deadline = time.monotonic() + 10
        while not (again := api.client.post("/v1/trainer/claim", headers=key, json={"trainer": "next"}).json())["job"]:
            assert time.monotonic() < deadline, "the job was not claimable again"  # retry backoff first
            time.sleep(0.1)
        assert again["job"]["id"] == job["id"] and again["attempt_id"] != claim["attempt_id"]


def test_a_claim_taken_back_while_finishing_registers_nothing(training_settings: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease loop takes the claim back between the trainer's finish request reading it and ending it:
    409, no LoRA registered for the job that is QUEUED again; the retry's outputs are its own."""
    from sqlalchemy import update

    from orchestrator.db.tables import Attempt, Job, LoraModel
    from orchestrator.training.app import trainings as tj
    from tests.unit.test_registry import lora_file

    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api)
        job = submit_training(api, ds["id"]).json()
        key = train_key(api)
        claim = api.client.post("/v1/trainer/claim", headers=key, json={"trainer": "slow"}).json()
        path = lora_file(tmp_path / "final.safetensors", 7)
        with path.open("rb") as f:
            out = api.client.post(f"/v1/trainer/attempts/{claim['attempt_id']}/outputs", headers=key,
                                  data={"trainer": "slow", "kind": "lora"}, files={"file": (path.name, f)})
        assert out.status_code == 201, out.text
        db = api.client.app.state.ctx.db
        held = tj.held_attempt

        def taken_back_meanwhile(session: Any, attempt_id: str, name: str, api_key_id: str | None = None) -> Any:
            got = held(session, attempt_id, name, api_key_id)
            with db.session() as other:  # what expire_claims does, committed in between
                other.execute(update(Attempt).where(Attempt.id == attempt_id).values(state=JobState.FAILED))
                other.execute(update(Job).where(Job.id == job["id"]).values(state=JobState.QUEUED))
                other.commit()
            return got

        monkeypatch.setattr(tj, "held_attempt", taken_back_meanwhile)
        r = api.client.post(f"/v1/trainer/attempts/{claim['attempt_id']}/finish", headers=key,
                            json={"trainer": "slow", "state": "SUCCEEDED", "lora_artifact": out.json()["id"]})
        assert r.status_code == 409, r.text
        monkeypatch.setattr(tj, "held_attempt", held)
        with db.session() as s:
            assert s.get(Job, job["id"]).state == JobState.QUEUED
            assert tj.latest_model(s, job["id"]) is None and not s.exec(tj.select(LoraModel)).all()
        deadline = time.monotonic() + 10
        while not (again := api.client.post("/v1/trainer/claim", headers=key, json={"trainer": "next"}).json())["job"]:
            assert time.monotonic() < deadline, "the job was not claimable again"
            time.sleep(0.1)
        with path.open("rb") as f:
            retry_out = api.client.post(f"/v1/trainer/attempts/{again['attempt_id']}/outputs", headers=key,
                                        data={"trainer": "next", "kind": "lora"}, files={"file": (path.name, f)})
        assert retry_out.status_code == 201 and retry_out.json()["id"] != out.json()["id"]
        assert retry_out.json()["attempt_id"] == again["attempt_id"]


def test_the_embedded_trainer_of_serve(training_settings: Settings) -> None:
    training_settings.local_trainer = True
    training_settings.sd_scripts_dir = FAKE_SD_SCRIPTS
    training_settings.trainer_python = sys.executable
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api, "sidekick")
        job = submit_training(api, ds["id"], max_train_steps=2, save_every_n_steps=None, sample_every_n_steps=None)
        assert job.status_code == 201, job.text
        done = wait(api, job.json()["id"], timeout=120)
        assert done["state"] == JobState.SUCCEEDED, done["error"]
        assert done["attempts"][0]["server"].startswith("trainer:local-")
        model = api.client.get("/v1/models/sidekick", headers=api.reader).json()
        assert model["filename"] == "sidekick-v1.safetensors" and model["state"] == "approved"
        server = api.client.app.state.ctx.pool.servers[0]
        assert "sidekick-v1.safetensors" in httpx.get(f"{server.url}/models/loras").json()


# -- the real sd-scripts ------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
REAL_NEEDED_GB = 8


def real_sd_scripts(tmp: Path) -> tuple[Path, Path, Path, Path]:
    """(sd-scripts dir, its Python, tokenizer folder, SD1.5-shaped diffusers model), or a skip with the reason."""
    import psutil

    st = Settings()
    if not st.sd_scripts_dir:
        pytest.skip("MEDIALAB_SD_SCRIPTS_DIR is not set: the real sd-scripts run through the trainer is skipped "
                    "(install it with scripts/install_sd_scripts.sh); the protocol tests above use the test device")
    free_gb = psutil.virtual_memory().available / 2**30
    if free_gb < REAL_NEEDED_GB:
        pytest.skip(f"only {free_gb:.1f} GB of memory available; a CPU training run needs about {REAL_NEEDED_GB} GB")
    venv = st.sd_scripts_dir / ".venv" / "bin" / "python"
    python = Path(st.trainer_python) if st.trainer_python else venv if venv.exists() else Path(sys.executable)

    def run(script: str, *args: Path) -> None:
        import subprocess

        done = subprocess.run([str(python), str(ROOT / "scripts" / script), *map(str, args)], capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"

    tokenizers = st.tokenizer_cache_dir or st.sd_scripts_dir / "tokenizers"
    if not (tokenizers / "openai_clip-vit-large-patch14").is_dir():
        tokenizers = tmp / "tokenizers"
        run("build_tokenizer.py", tokenizers)
    model = ROOT / ".runtime" / "fixtures" / "sd15_sdscripts"
    if not (model / "model_index.json").exists():
        run("fixtures_sd15.py", model)
    return st.sd_scripts_dir, python, tokenizers, model


@pytest.fixture(scope="module")
def real_sd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    return real_sd_scripts(tmp_path_factory.mktemp("sd"))  # before the ComfyUI server: a skip costs nothing


def test_real_sd_scripts_lora_is_registered_and_used(real_sd: tuple[Path, Path, Path, Path],
                                                     training_settings: Settings, tmp_path: Path) -> None:
    """Two real training steps on the CPU through the HTTP trainer; the LoRA lands on ComfyUI and is used."""
    scripts, python, tokenizers, model = real_sd
    (training_settings.models_dir / "checkpoints" / "sd15-test").symlink_to(model, target_is_directory=True)
    with make_api(training_settings, dispatch=True) as api:
        ds = build_dataset(api, "real")
        r = api.client.post("/v1/trainings", headers=api.run, json={
            "dataset": ds["id"], "base": "sd15-test", "preset": "sd15-character", "trigger": "mlchar",
            "set": {"resolution": 64, "max_train_steps": 2, "network_dim": 4, "network_alpha": 4,
                    "save_every_n_steps": None, "sample_every_n_steps": None, "max_data_loader_n_workers": 0}})
        assert r.status_code == 201, r.text
        backend = HttpBackend(None, train_key(api)["X-API-Key"], "real-host", client=api.client)
        trainer = Trainer(backend, workdir=tmp_path / "trainer", sd_scripts_dir=scripts, python=str(python),
                          tokenizer_cache_dir=tokenizers, models_dir=training_settings.models_dir, cpu=True)
        assert trainer.run_once() == r.json()["id"]
        done = wait(api, r.json()["id"])
        assert done["state"] == "SUCCEEDED", done["error"]
        assert any(e["kind"] == "progress" and (e["data"] or {}).get("step") == 2 for e in events(api, done["id"]))
        model_row = api.client.get("/v1/models/real", headers=api.reader).json()
        assert model_row["ss_metadata"]["ss_network_dim"] == "4" and model_row["state"] == "approved"
        server = api.client.app.state.ctx.pool.servers[0]
        assert "real-v1.safetensors" in httpx.get(f"{server.url}/models/loras").json()
        params = {"lora": "real-v1.safetensors", "checkpoint": "tiny_sd15.safetensors", "steps": 1, "width": 64,
                  "height": 64, "prompt": "photo of mlchar person", "seed": 3}
        gen = api.client.post("/v1/jobs", headers=api.run, json={"template": "generate-lora", "params": params})
        assert gen.status_code == 201, gen.text
        assert wait(api, gen.json()["id"], timeout=300)["state"] == "SUCCEEDED"
