"""The trainer's files: a diffusers-folder base carried as a tar (packed, checked, unpacked), and the per-job work
folder removed at every end while the checkpoint cache stays."""

from __future__ import annotations

import io
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import InvalidInput, TrainingFailed
from orchestrator.core.states import JobState
from orchestrator.training.core.dataset import DatasetImage, build_dataset
from orchestrator.training.core.presets import spec_from
from orchestrator.training.runtime import checkpoint_files as cf
from orchestrator.training.runtime.trainer import Claim, ClaimLost, Trainer
from tests.unit.test_trainer_claims import noise_png


def diffusers_folder(root: Path) -> Path:
    """A folder shaped like a diffusers model (contents are not read)."""
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 4099)  # not 512-aligned
    (root / "text_encoder" / "model.safetensors").write_bytes(b"te" * 300)
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_goes_through_the_tar_whole_and_the_length_is_known(tmp_path: Path) -> None:
    src = diffusers_folder(tmp_path / "models" / "checkpoints" / "sd15")
    (src / "unet" / "alias.safetensors").symlink_to(src / "unet" / "diffusion_pytorch_model.safetensors")
    members = cf.folder_members(src, "sd15")
    data = b"".join(cf.tar_stream(members, chunk=1000))
    assert len(data) == cf.tar_size(members)
    dest = cf.unpack_folder(cf.IterReader(iter([data[i:i + 777] for i in range(0, len(data), 777)])),
                            tmp_path / "cache" / "sd15")
    assert files_of(dest) == files_of(src)  # the link inside is sent as the file it names
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert not (tmp_path / "cache" / "sd15.part").exists()


@pytest.mark.parametrize("make", ["link out", "link to a folder", "fifo"])
def test_a_folder_with_a_way_out_is_refused(tmp_path: Path, make: str) -> None:
    import os

    src = diffusers_folder(tmp_path / "sd15")
    secret = tmp_path / "secret.txt"
    secret.write_text("api keys")
    if make == "link out":
        (src / "unet" / "weights.bin").symlink_to(secret)
    elif make == "link to a folder":
        (src / "vae").symlink_to(src / "unet", target_is_directory=True)
    else:
        os.mkfifo(src / "pipe")
    with pytest.raises(InvalidInput, match="base checkpoint 'sd15': ") as exc:
        cf.folder_members(src, "sd15")
    assert str(secret) in exc.value.message if make == "link out" else True


def _tar(*entries: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/escape.txt", "link"])
def test_unpacking_takes_only_files_and_folders_inside(tmp_path: Path, bad: str) -> None:
    good = tarfile.TarInfo("model_index.json")
    good.size = 2
    evil = tarfile.TarInfo(bad)
    if bad == "link":
        evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        evil.size = 1
    with pytest.raises(InvalidInput, match="not a plain file or folder"):
        cf.unpack_folder(io.BytesIO(_tar(good, evil)), tmp_path / "cache" / "sd15")
    assert not (tmp_path / "cache" / "sd15").exists() and not (tmp_path / "cache" / "sd15.part").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_short_tar_leaves_nothing(tmp_path: Path) -> None:
    members = cf.folder_members(diffusers_folder(tmp_path / "sd15"), "sd15")
    data = b"".join(cf.tar_stream(members))
    with pytest.raises(tarfile.TarError):
        cf.unpack_folder(io.BytesIO(data[: len(data) // 2]), tmp_path / "cache" / "sd15")
    assert list((tmp_path / "cache").iterdir()) == []


# -- the work folder --------------------------------------------------------------------------------------
def dataset_tar() -> bytes:
    pictures = [DatasetImage(f"f{i}.png", noise_png(i), None) for i in range(5)]
    return build_dataset(pictures, resolution=64, caption_template="photo of {trigger}", trigger="mlchar").to_tar()


@dataclass
class FakeBackend:
    """The orchestrator's side, in memory: the base is a file or a folder; ``lose`` makes finish lose the claim."""

    base_folder: Path | None = None
    lose: bool = False
    name: str = "fake"
    downloads: list[str] = field(default_factory=list)
    finished: list[JobState] = field(default_factory=list)

    def claim(self) -> Claim | str | None:
        return None

    def heartbeat(self, claim: Claim, events: list[dict[str, Any]]) -> bool:
        return False

    def download_dataset(self, claim: Claim, dest: Path) -> None:
        dest.write_bytes(dataset_tar())

    def download_checkpoint(self, name: str, dest: Path) -> None:
        self.downloads.append(name)
        if self.base_folder is None:
            dest.write_bytes(b"\0" * 64)
        else:
            cf.unpack_folder(cf.IterReader(cf.tar_stream(cf.folder_members(self.base_folder, name))), dest)

    def upload(self, claim: Claim, kind: str, path: Path, step: int | None = None) -> str:
        return f"art-{kind}"

    def finish(self, claim: Claim, state: JobState, error: dict[str, Any] | None = None,
               lora_artifact: str | None = None) -> None:
        if self.lose:
            raise ClaimLost("taken back")
        self.finished.append(state)


@dataclass
class Result:
    lora: Path
    cancelled: bool = False
    samples: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


def make_claim(job: str, base: str) -> Claim:
    spec = spec_from("sd15-character", {"trigger": "mlchar", "resolution": 64})
    return Claim(job, f"att-{job}", {"base_model": base, "spec": spec.model_dump(mode="json")}, 60.0, 0.05)


def runner(how: str):  # noqa: ANN201
    def run(spec, *, dataset_dir: Path, pretrained_model: Path, workdir: Path, cancel: threading.Event,
            **_: Any) -> Result:  # noqa: ANN001
        assert pretrained_model.exists() and any(dataset_dir.iterdir())
        workdir.mkdir(parents=True)
        lora = workdir / "lora.safetensors"
        lora.write_bytes(b"lora")
        (workdir / "half-written.safetensors").write_bytes(b"x" * 100)
        if how == "fail":
            raise TrainingFailed("sd-scripts exited with 1", log_tail="boom")
        return Result(lora, cancelled=how == "cancel")
    return run


@pytest.mark.parametrize(("how", "state"), [("succeed", JobState.SUCCEEDED), ("fail", JobState.FAILED),
                                            ("cancel", JobState.CANCELLED), ("lose", JobState.FAILED)])
def test_the_work_folder_goes_at_every_end_and_the_checkpoint_cache_stays(tmp_path: Path, how: str,
                                                                          state: JobState) -> None:
    backend = FakeBackend(base_folder=diffusers_folder(tmp_path / "orch" / "sd15"), lose=how == "lose")
    work = tmp_path / "trainer"
    t = Trainer(backend, workdir=work, sd_scripts_dir=tmp_path, runner=runner(how))  # type: ignore[arg-type]
    assert t.train(make_claim("job1", "sd15")) == state
    assert backend.finished == ([] if how == "lose" else [state])
    assert not (work / "runs" / "job1").exists()
    assert files_of(work / "checkpoints" / "sd15") == files_of(tmp_path / "orch" / "sd15")  # cached, complete
    assert t.train(make_claim("job2", "sd15")) in (state, JobState.FAILED)
    assert backend.downloads == ["sd15"]  # the second run used the cache
    assert list((work / "runs").iterdir()) == []


def test_a_run_that_never_started_leaves_no_folder_either(tmp_path: Path) -> None:
    class Broken(FakeBackend):
        def download_dataset(self, claim: Claim, dest: Path) -> None:
            dest.write_bytes(b"not a tar")

    backend = Broken()
    t = Trainer(backend, workdir=tmp_path / "trainer", sd_scripts_dir=tmp_path, runner=runner("succeed"))  # type: ignore[arg-type]
    assert t.train(make_claim("job1", "base.safetensors")) == JobState.FAILED
    assert backend.finished == [JobState.FAILED]
    assert list((tmp_path / "trainer" / "runs").iterdir()) == []


def test_the_checkpoints_folder_itself_is_no_base(tmp_path: Path) -> None:
    from orchestrator.core.errors import NotFound
    from orchestrator.settings import Settings
    from orchestrator.training.app import trainings as tj

    settings = Settings(home=tmp_path / "home", models_dir=tmp_path / "models")
    diffusers_folder(settings.models_dir / "checkpoints" / "sd15")
    path, members = tj.served_checkpoint(settings, "sd15")
    assert path == settings.models_dir / "checkpoints" / "sd15" and members
    for name in (".", "./", ".\\"):
        assert tj.local_checkpoint(settings, name) is None
        with pytest.raises(NotFound):
            tj.served_checkpoint(settings, name)
