"""The training runner end to end with the real kohya sd-scripts on the CPU.

Needs MEDIALAB_SD_SCRIPTS_DIR: a checkout at the pinned commit with its dependencies installed
(scripts/install_sd_scripts.sh). Its Python is MEDIALAB_TRAINER_PYTHON, else DIR/.venv/bin/python; the offline
tokenizer folder MEDIALAB_TOKENIZER_CACHE_DIR, else DIR/tokenizers, else built here. The SD1.5-shaped test model
(full-size random U-Net, tiny text encoder and VAE; scripts/fixtures_sd15.py) is built once into
.runtime/fixtures (about 40 s, 1.6 GB). Each run needs about 7.5 GB of memory.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.core.errors import TrainingFailed
from orchestrator.settings import Settings
from orchestrator.training.core.dataset import DatasetImage, build_dataset
from orchestrator.training.core.presets import spec_from
from orchestrator.training.core.progress import TrainingEvent
from orchestrator.training.runtime.dataset_files import write_dataset
from orchestrator.training.runtime.runner import run_training

ROOT = Path(__file__).resolve().parent.parent.parent
NEEDED_GB = 8

pytestmark = pytest.mark.skipif(not Settings().sd_scripts_dir,
                                reason="MEDIALAB_SD_SCRIPTS_DIR does not point at an sd-scripts checkout "
                                       "(install one with scripts/install_sd_scripts.sh)")


class SdScripts:
    def __init__(self, tmp: Path) -> None:
        s = Settings()
        assert s.sd_scripts_dir is not None
        self.dir = s.sd_scripts_dir
        venv = self.dir / ".venv" / "bin" / "python"
        self.python = Path(s.trainer_python) if s.trainer_python else venv if venv.exists() else Path(sys.executable)
        tok = s.tokenizer_cache_dir or self.dir / "tokenizers"
        if not (tok / "openai_clip-vit-large-patch14").is_dir():
            tok = tmp / "tokenizers"
            self.sd_python(ROOT / "scripts" / "build_tokenizer.py", tok)
        self.tokenizers = tok

    def sd_python(self, script: Path, *args: object) -> None:
        done = subprocess.run([str(self.python), str(script), *map(str, args)], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"{script.name} failed with {self.python}:\n{done.stdout}\n{done.stderr}")

    def model(self, name: str, *flags: str) -> Path:
        path = ROOT / ".runtime" / "fixtures" / name
        if not (path / "model_index.json").exists():
            self.sd_python(ROOT / "scripts" / "fixtures_sd15.py", path, *flags)
        return path


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> SdScripts:
    free_gb = psutil.virtual_memory().available / 2**30
    if free_gb < NEEDED_GB:
        pytest.skip(f"only {free_gb:.1f} GB of memory available; a CPU training run needs about {NEEDED_GB} GB")
    return SdScripts(tmp_path_factory.mktemp("sd"))


def dataset(folder: Path) -> Path:
    from PIL import Image

    pictures = []
    for i in range(5):
        img = Image.new("RGB", (96, 80), (40 * i, 255 - 40 * i, 128))
        img.paste((255, 255, 255), (10 * i, 10, 10 * i + 30, 40))
        from io import BytesIO

        buf = BytesIO()
        img.save(buf, format="PNG")
        pictures.append(DatasetImage(f"frame{i}.png", buf.getvalue(), f"a square number {i}"))
    ds = build_dataset(pictures, resolution=64, caption_template="photo of {trigger}, {caption}", trigger="tinything")
    return write_dataset(ds, folder)


def spec(**extra):
    return spec_from(None, dict(base="sd15", network_dim=4, network_alpha=1, learning_rate=1e-4, max_train_steps=2,
                                resolution=64, batch_size=1, trigger="tinything", output_name="tinylora", seed=1,
                                max_data_loader_n_workers=0, cache_latents=True) | extra)


def left_behind(workdir: Path) -> list[psutil.Process]:
    """Processes still running that belong to this run (its args file is on their command line)."""
    mark = str(workdir)
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(mark in a for a in p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_two_step_lora_under_accelerate(sd, tmp_path):
    from safetensors import safe_open

    events: list[TrainingEvent] = []
    started = time.monotonic()
    result = run_training(spec(save_every_n_steps=1), dataset_dir=dataset(tmp_path / "data"),
                          pretrained_model=sd.model("sd15_sdscripts"), workdir=tmp_path / "work",
                          sd_scripts_dir=sd.dir, python=sd.python, tokenizer_cache_dir=sd.tokenizers,
                          on_event=events.append, cancel=threading.Event(), cpu=True, accelerate=True)
    wall = time.monotonic() - started
    assert result.exit_code == 0 and result.lora == tmp_path / "work" / "output" / "tinylora.safetensors"
    with safe_open(str(result.lora), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    unet = [k for k in keys if k.startswith("lora_unet_")]
    assert unet and any(k.startswith("lora_te_") for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "2" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_training_comment"] == "medialab; trigger: tinything"
    assert "photo of tinything" in meta["ss_tag_frequency"]
    bars = [e for e in events if e.kind == "progress"]
    assert bars[-1].step == 2 and bars[-1].total == 2 and bars[-1].loss is not None
    assert [Path(p).name for p in result.checkpoints] == ["tinylora-step00000001.safetensors",
                                                          "tinylora-step00000002.safetensors"]
    assert [e.step for e in events if e.kind == "checkpoint"] == [1, 2]
    assert not left_behind(tmp_path / "work")
    print(f"\n2-step LoRA: {wall:.1f} s wall, {len(unet)} U-Net tensors, "
          f"{result.lora.stat().st_size / 1e6:.1f} MB, {bars[-1].rate or 0:.2f} steps/s, loss {bars[-1].loss}")


def test_cancel_mid_run_leaves_no_process(sd, tmp_path):
    cancel = threading.Event()
    events: list[TrainingEvent] = []

    def on_event(e: TrainingEvent) -> None:
        events.append(e)
        if e.kind == "progress" and e.step is not None and e.step >= 1:
            cancel.set()  # training is under way: stop it

    result = run_training(spec(max_train_steps=200), dataset_dir=dataset(tmp_path / "data"),
                          pretrained_model=sd.model("sd15_sdscripts"), workdir=tmp_path / "work",
                          sd_scripts_dir=sd.dir, python=sd.python, tokenizer_cache_dir=sd.tokenizers,
                          on_event=on_event, cancel=cancel, cpu=True, accelerate=True, grace_s=10)
    assert result.cancelled and result.lora is None
    assert max(e.step for e in events if e.kind == "progress") < 200
    assert not left_behind(tmp_path / "work")
    assert not (tmp_path / "work" / "output" / "tinylora.safetensors").exists()


def test_a_model_sd_scripts_cannot_load_fails_with_its_traceback(sd, tmp_path):
    with pytest.raises(TrainingFailed) as exc:
        run_training(spec(), dataset_dir=dataset(tmp_path / "data"),
                     pretrained_model=sd.model("sd15_sdscripts_shallow", "--shallow"), workdir=tmp_path / "work",
                     sd_scripts_dir=sd.dir, python=sd.python, tokenizer_cache_dir=sd.tokenizers,
                     on_event=lambda e: None, cancel=threading.Event(), cpu=True, accelerate=False)
    assert exc.value.extra["exit_code"] == 1
    assert "load_state_dict" in exc.value.extra["log_tail"] and "Error" in exc.value.message
    assert not left_behind(tmp_path / "work")
    print(f"\nrefused model: {exc.value.message}")
