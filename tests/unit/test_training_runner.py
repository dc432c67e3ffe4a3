"""The runner's process handling with a real process tree (tests/data/training/proc_tree.py in place of
train_network.py): live events and file pickup, exit-code logic, cancel of the whole group, no orphan left."""

import shutil
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.core.errors import InvalidInput, TrainingFailed
from orchestrator.training.core.presets import spec_from
from orchestrator.training.runtime.runner import file_step, group_alive, run_training

PROC_TREE = Path(__file__).parent.parent / "data" / "training" / "proc_tree.py"
SPEC = spec_from(None, dict(base="sd15", network_dim=4, network_alpha=1, learning_rate=1e-4, max_train_steps=2,
                            resolution=64, trigger="tinything", output_name="tl", max_data_loader_n_workers=0))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    sd = tmp_path / "sd-scripts"
    sd.mkdir()
    shutil.copy(PROC_TREE, sd / "train_network.py")
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    (img / "a.png").write_bytes(b"png")
    model = tmp_path / "model"
    model.mkdir()

    def run(mode: str, cancel: threading.Event | None = None, **kw):
        monkeypatch.setenv("MEDIALAB_TEST_PROC_MODE", mode)
        events = []
        result = run_training(SPEC, dataset_dir=tmp_path / "data", pretrained_model=model, workdir=tmp_path / "work",
                              sd_scripts_dir=sd, python=sys.executable, tokenizer_cache_dir=None,
                              on_event=events.append, cancel=cancel or threading.Event(), accelerate=False,
                              poll_s=0.1, **kw)
        return result, events

    run.workdir = tmp_path / "work"  # type: ignore[attr-defined]
    run.sd = sd  # type: ignore[attr-defined]
    return run


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_finished_run_reports_progress_files_and_result(setup):
    result, events = setup("finish")
    out = setup.workdir / "output"
    assert result.lora == out / "tl.safetensors" and result.exit_code == 0 and not result.cancelled
    assert result.checkpoints == [out / "tl-step00000001.safetensors"]
    assert [p.name for p in result.samples] == ["tl_000001_00_20260101000000_42.png"]
    bars = [(e.step, e.loss) for e in events if e.kind == "progress"]
    assert bars == [(0, None), (1, None), (1, 1.09), (2, 1.13)]
    files = [(e.kind, Path(e.path).name, e.step) for e in events if e.kind in ("checkpoint", "sample")]
    assert sorted(files) == [("checkpoint", "tl-step00000001.safetensors", 1),
                             ("sample", "tl_000001_00_20260101000000_42.png", 1)]
    # the file events came while the process ran (before the final bar), each once; the final file is no checkpoint
    assert events.index(next(e for e in events if e.kind == "checkpoint")) < \
        events.index(next(e for e in events if e.kind == "progress" and e.step == 2))
    assert all(e.path is None for e in events if e.kind == "log")
    work = setup.workdir
    assert {"dataset.toml", "args.toml", "command.txt"} <= {p.name for p in work.iterdir()}
    assert "steps:" in (work / "logs" / "stderr.txt").read_text()  # raw output kept beside the run


def test_exit_zero_without_the_final_file_is_a_failure(setup):
    with pytest.raises(TrainingFailed) as exc:
        setup("empty")
    assert "exited 0 but the dataset was empty to sd-scripts" in exc.value.message
    assert exc.value.extra["exit_code"] == 0 and "No data found" in exc.value.extra["log_tail"]
    assert exc.value.result.lora is None  # type: ignore[attr-defined]


def test_crash_reports_the_exception(setup):
    with pytest.raises(TrainingFailed) as exc:
        setup("crash")
    assert exc.value.message == "sd-scripts failed (exit 1): RuntimeError: CUDA out of memory (imitated)"
    assert exc.value.extra["log_tail"].startswith("Traceback (most recent call last):")
    assert exc.value.status == 500


def test_cancel_stops_the_whole_group_and_leaves_nothing(setup):
    cancel = threading.Event()
    pids_file = setup.workdir / "pids.txt"

    def cancel_when_started():
        deadline = time.monotonic() + 30
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel.set()

    threading.Thread(target=cancel_when_started, daemon=True).start()
    started = time.monotonic()
    result, events = setup("hang", cancel=cancel, grace_s=1.0)
    took = time.monotonic() - started
    leader, child = map(int, pids_file.read_text().split())
    assert result.cancelled and result.lora is None and result.exit_code == -15
    # the child ignores SIGTERM: it needed the SIGKILL after the grace period, and nothing is left behind
    assert gone(leader) and gone(child) and not group_alive(leader)
    assert took < 20
    assert any(e.kind == "progress" and e.total == 100 for e in events)


def test_a_child_left_behind_by_a_finished_run_is_stopped(setup):
    result, _ = setup("leave-child", grace_s=0.5)
    leader, child = map(int, (setup.workdir / "pids.txt").read_text().split())
    assert result.lora is not None and result.exit_code == 0
    assert gone(child) and not group_alive(leader)


def test_preflight_refuses_runs_that_cannot_work(setup, tmp_path):
    (setup.sd / "train_network.py").unlink()
    with pytest.raises(InvalidInput, match="not an sd-scripts checkout"):
        setup("finish")
    shutil.copy(PROC_TREE, setup.sd / "train_network.py")
    (tmp_path / "data" / "img" / "a.png").unlink()
    with pytest.raises(InvalidInput, match="no training images"):
        setup("finish")
    assert not (setup.workdir / "output").exists()  # nothing was started


def test_tokenizer_cache_is_checked(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.png").write_bytes(b"x")
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "train_network.py").write_text("")
    with pytest.raises(InvalidInput, match="lacks openai_clip-vit-large-patch14"):
        run_training(SPEC, dataset_dir=img, pretrained_model=sd, workdir=tmp_path / "w", sd_scripts_dir=sd,
                     python=sys.executable, tokenizer_cache_dir=tmp_path, on_event=print, cancel=threading.Event())


def test_file_step():
    assert file_step("tl-step00000003.safetensors") == 3
    assert file_step("tl_000004_00_20260101000000_1.png") == 4
    assert file_step("tl_e000002_00_20260101000000_1.png") is None  # an epoch, not a step
    assert file_step("tl-000001.safetensors") is None
