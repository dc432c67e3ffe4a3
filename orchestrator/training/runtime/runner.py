"""Run one sd-scripts LoRA training as a process group: live events, new files picked up, cancel without orphans.

I/O edge of the training package: writes the run's files into ``workdir``, starts sd-scripts in its own session
(so the accelerate launcher and its training child can be signalled together), reads stdout and stderr on two
threads, and reports progress, intermediate checkpoints and sample images (once fully written) through
``on_event`` from the calling thread. Success is exit 0 AND the final file present: sd-scripts exits 0 on an
empty dataset, and the accelerate launcher's exit code does not follow its child's.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from orchestrator.core.errors import InvalidInput, TrainingFailed
from orchestrator.training.core import config
from orchestrator.training.core.presets import TrainingSpec
from orchestrator.training.core.progress import ProgressParser, TrainingEvent

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
TOKENIZER_FOLDERS = {"sd15": ["openai_clip-vit-large-patch14"],
                     "sdxl": ["openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"]}
STEP_FILE = re.compile(r"-step(\d+)\.safetensors$")
SAMPLE_FILE = re.compile(r"_(e?)(\d{6})_\d{2}_")
OFFLINE_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "DIFFUSERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONIOENCODING": "utf-8"}


@dataclass
class TrainingResult:
    """How a run ended. ``lora`` is the final file (None when cancelled)."""

    lora: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    exit_code: int | None = None
    log_tail: str = ""
    cancelled: bool = False
    duration_s: float = 0.0
    workdir: Path | None = None


@dataclass(frozen=True)
class RunFiles:
    """Where one run's inputs and outputs live under its workdir."""

    workdir: Path

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    @property
    def logging_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def dataset_file(self) -> Path:
        return self.workdir / "dataset.toml"

    @property
    def args_file(self) -> Path:
        return self.workdir / "args.toml"

    @property
    def prompts_file(self) -> Path:
        return self.workdir / "sample_prompts.txt"

    @property
    def sample_dir(self) -> Path:
        return self.output_dir / "sample"


def image_dir_of(dataset_dir: Path) -> Path:
    """The folder holding the images: ``dataset_dir/img`` as ``dataset_files.write_dataset`` lays it out, else
    dataset_dir."""
    return dataset_dir / "img" if (dataset_dir / "img").is_dir() else dataset_dir


def preflight(spec: TrainingSpec, *, image_dir: Path, pretrained_model: Path, sd_scripts_dir: Path, python: Path,
              tokenizer_cache_dir: Path | None) -> None:
    """Refuse a run that cannot work before starting it (InvalidInput naming what is missing)."""
    if not (sd_scripts_dir / spec.script).is_file():
        raise InvalidInput(f"{sd_scripts_dir} is not an sd-scripts checkout: {spec.script} is missing")
    if not os.access(python, os.X_OK):
        raise InvalidInput(f"the trainer's Python {python} is not an executable")
    if not pretrained_model.exists():
        raise InvalidInput(f"base model {pretrained_model} does not exist")
    if not image_dir.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in image_dir.iterdir()):
        raise InvalidInput(f"no training images in {image_dir} (sd-scripts would exit 0 without training)")
    if tokenizer_cache_dir is not None:
        missing = [f for f in TOKENIZER_FOLDERS[spec.base] if not (tokenizer_cache_dir / f).is_dir()]
        if missing:
            raise InvalidInput(f"tokenizer cache {tokenizer_cache_dir} lacks {', '.join(missing)} "
                               "(build it with scripts/build_tokenizer.py)")


def write_run_files(spec: TrainingSpec, files: RunFiles, *, image_dir: Path, pretrained_model: Path,
                    tokenizer_cache_dir: Path | None) -> None:
    """The dataset TOML, the argument TOML and the sample prompts of the run."""
    files.output_dir.mkdir(parents=True, exist_ok=True)
    files.logging_dir.mkdir(parents=True, exist_ok=True)
    prompts = None
    if spec.sample_every_n_steps is not None:
        files.prompts_file.write_text(config.sample_prompts_text(spec), encoding="utf-8")
        prompts = files.prompts_file
    files.dataset_file.write_text(config.dataset_toml(spec, image_dir.resolve()), encoding="utf-8")
    files.args_file.write_text(config.args_toml(
        spec, pretrained_model=pretrained_model.resolve(), output_dir=files.output_dir.resolve(),
        logging_dir=files.logging_dir.resolve(), tokenizer_cache_dir=tokenizer_cache_dir.resolve()
        if tokenizer_cache_dir is not None else None, sample_prompts_file=prompts), encoding="utf-8")


def group_alive(pgid: int) -> bool:
    """True while a process of the group is alive (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the whole group, SIGKILL after ``grace_s``; returns once no process of it is left."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if not group_alive(pgid):
                proc.wait()
                return
            time.sleep(0.05)
    proc.wait(timeout=5)


class FileWatch:
    """Reports checkpoints and sample images once their size stayed the same over two looks."""

    def __init__(self, files: RunFiles, final_name: str) -> None:
        self.files = files
        self.final_name = final_name
        self._seen: dict[Path, tuple[int, int]] = {}
        self.reported: dict[Path, str] = {}

    def scan(self, *, final: bool = False) -> list[TrainingEvent]:
        """New complete files; with ``final`` (the process is gone) every file present counts as complete."""
        found: list[tuple[str, Path]] = []
        if self.files.output_dir.is_dir():
            found += [("checkpoint", p) for p in self.files.output_dir.glob("*.safetensors")
                      if p.name != self.final_name]
        if self.files.sample_dir.is_dir():
            found += [("sample", p) for p in self.files.sample_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        events = []
        for kind, path in sorted(found, key=lambda kp: kp[1].name):
            if path in self.reported:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if st.st_size and (final or self._seen.get(path) == sig):
                self.reported[path] = kind
                events.append(TrainingEvent(kind, step=file_step(path.name), path=str(path)))  # type: ignore[arg-type]
            self._seen[path] = sig
        return events

    def paths(self, kind: str) -> list[Path]:
        return sorted((p for p, k in self.reported.items() if k == kind), key=lambda p: p.name)


def file_step(name: str) -> int | None:
    """The step in an intermediate file name (``x-step00000003.safetensors``, ``x_000004_00_..png``)."""
    m = STEP_FILE.search(name)
    if m:
        return int(m.group(1))
    m = SAMPLE_FILE.search(name)
    return int(m.group(2)) if m and not m.group(1) else None


def _pump(stream: IO[bytes], parser: ProgressParser, out: queue.Queue[TrainingEvent],
          copy: IO[bytes]) -> None:
    """Read one pipe to its end: raw bytes to the log copy, decoded text to the parser, events to the queue."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        copy.write(chunk)
        copy.flush()
        for event in parser.feed(decoder.decode(chunk)):
            out.put(event)
    for event in parser.feed(decoder.decode(b"", final=True)) + parser.close():
        out.put(event)


def _relay(event: TrainingEvent) -> TrainingEvent:
    """The parser announces checkpoints and samples when saving starts; files are reported by FileWatch once
    written, so the announcements go on as log events."""
    if event.kind in ("checkpoint", "sample"):
        return TrainingEvent("log", step=event.step, message=event.message)
    return event


def failure_text(out: ProgressParser, err: ProgressParser, lines: int = 25) -> str:
    """The traceback if there was one, else the last lines of both streams."""
    if err.traceback:
        return "\n".join(err.traceback[-lines:])
    if out.traceback:
        return "\n".join(out.traceback[-lines:])
    return "\n".join(out.tail[-lines // 2:] + err.tail[-lines // 2:])


def run_training(spec: TrainingSpec, *, dataset_dir: Path, pretrained_model: Path, workdir: Path,
                 sd_scripts_dir: Path, python: Path | str, tokenizer_cache_dir: Path | None,
                 on_event: Callable[[TrainingEvent], None], cancel: threading.Event, cpu: bool = False,
                 accelerate: bool = True, grace_s: float = 10.0, poll_s: float = 0.5) -> TrainingResult:
    """Train one LoRA; returns the result (``cancelled`` when ``cancel`` was set), raises TrainingFailed when the
    run failed (with the log tail) and InvalidInput when it cannot start."""
    dataset_dir, pretrained_model, workdir = Path(dataset_dir), Path(pretrained_model), Path(workdir)
    sd_scripts_dir, python = Path(sd_scripts_dir), Path(python)
    tokenizer_cache_dir = Path(tokenizer_cache_dir) if tokenizer_cache_dir is not None else None
    image_dir = image_dir_of(dataset_dir)
    preflight(spec, image_dir=image_dir, pretrained_model=pretrained_model, sd_scripts_dir=sd_scripts_dir,
              python=python, tokenizer_cache_dir=tokenizer_cache_dir)
    files = RunFiles(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_run_files(spec, files, image_dir=image_dir, pretrained_model=pretrained_model,
                    tokenizer_cache_dir=tokenizer_cache_dir)
    argv = config.command(spec, sd_scripts_dir=sd_scripts_dir.resolve(), python=python, args_file=files.args_file,
                          dataset_file=files.dataset_file, accelerate=accelerate, cpu=cpu)
    (workdir / "command.txt").write_text(" ".join(argv) + "\n", encoding="utf-8")
    final = files.output_dir / f"{spec.output_name}.safetensors"
    watch = FileWatch(files, final.name)
    events: queue.Queue[TrainingEvent] = queue.Queue()
    out_parser, err_parser = ProgressParser(), ProgressParser()

    def emit(event: TrainingEvent) -> None:
        try:
            on_event(event)
        except Exception:  # a listener's bug must not leave the training unsupervised
            log.exception("training event listener failed on %s", event.kind)

    started = time.monotonic()
    env = {**os.environ, **OFFLINE_ENV}
    with open(files.logging_dir / "stdout.txt", "wb") as out_copy, \
            open(files.logging_dir / "stderr.txt", "wb") as err_copy:
        proc = subprocess.Popen(argv, cwd=sd_scripts_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        log.info("training %s started: pid %d", spec.output_name, proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=_pump, args=(proc.stdout, out_parser, events, out_copy),
                                    daemon=True, name="sd-scripts-stdout"),
                   threading.Thread(target=_pump, args=(proc.stderr, err_parser, events, err_copy),
                                    daemon=True, name="sd-scripts-stderr")]
        for r in readers:
            r.start()
        cancelled = False
        try:
            while proc.poll() is None:
                if cancel.wait(poll_s):
                    cancelled = True
                    log.info("training %s cancelled: stopping process group %d", spec.output_name, proc.pid)
                    stop_group(proc, grace_s)
                    break
                _drain(events, emit)
                for e in watch.scan():
                    emit(e)
        finally:
            if proc.poll() is None or group_alive(proc.pid):  # an error here, or a child left behind
                stop_group(proc, grace_s if not cancelled else 0)
            for r, pipe in zip(readers, (proc.stdout, proc.stderr), strict=True):
                r.join(timeout=10)
                if not r.is_alive():  # (closing a pipe a thread still reads would wait on that read)
                    pipe.close()  # one pair of pipes per training otherwise left to the garbage collector
        _drain(events, emit)
    for e in watch.scan(final=True):
        emit(e)
    code = proc.returncode
    result = TrainingResult(lora=final if final.is_file() and not cancelled else None,
                            checkpoints=watch.paths("checkpoint"), samples=watch.paths("sample"), exit_code=code,
                            log_tail=failure_text(out_parser, err_parser), cancelled=cancelled,
                            duration_s=round(time.monotonic() - started, 3), workdir=workdir)
    log.info("training %s ended: exit %s in %.1f s%s", spec.output_name, code, result.duration_s,
             " (cancelled)" if cancelled else "")
    if cancelled:
        return result
    if code != 0:
        raise _failed(f"sd-scripts failed (exit {code}): {last_error(result.log_tail)}", result)
    if result.lora is None:
        empty = any("No data found" in line for line in out_parser.tail + err_parser.tail)
        why = "the dataset was empty to sd-scripts (\"No data found\")" if empty else "no final file was written"
        raise _failed(f"sd-scripts exited 0 but {why}: {final.name} is missing", result)
    return result


def _failed(message: str, result: TrainingResult) -> TrainingFailed:
    """The error of a failed run; the whole result rides along as ``.result`` (checkpoints already written)."""
    exc = TrainingFailed(message, exit_code=result.exit_code, log_tail=result.log_tail)
    exc.result = result  # type: ignore[attr-defined]
    return exc


def last_error(tail: str) -> str:
    """The most telling line of a log tail: the exception line of a traceback, else the last line."""
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i]
        if not ln.startswith((" ", "\t")) and re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln):
            if ln.endswith(":") and i + 1 < len(lines):  # the message goes on below ("Missing key(s) ...")
                ln = f"{ln} {lines[i + 1].strip()}"
            return ln if len(ln) <= 300 else ln[:297] + "..."
    return lines[-1] if lines else "no output"


def _drain(events: queue.Queue[TrainingEvent], emit: Callable[[TrainingEvent], None]) -> None:
    while True:
        try:
            emit(_relay(events.get_nowait()))
        except queue.Empty:
            return
