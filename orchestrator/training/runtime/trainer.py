"""The trainer: a process (or, embedded, a thread) that pulls training jobs and runs sd-scripts for them.

``medialab trainer`` runs on a GPU host and talks to the orchestrator over its HTTP API with a key of role
``train`` (``HttpBackend``); ``medialab serve`` runs one in-process trainer on the same database and store
(``LocalBackend``) when ``MEDIALAB_LOCAL_TRAINER`` is true and ``MEDIALAB_SD_SCRIPTS_DIR`` is set. For each
claimed job it downloads the dataset and, unless its models folder has it, the base checkpoint; runs part
A's ``run_training``; a heartbeat thread renews the claim, sends progress events and uploads samples and
intermediate checkpoints as they appear, and sets the cancel event when the orchestrator says cancel (or
the claim was lost); at the end it uploads the final LoRA and reports success or failure. The job's work folder
(``<workdir>/runs/<job>``) is removed at every end, success, failure, cancel or a lost claim; the checkpoint
cache (``<workdir>/checkpoints``) is kept.
"""

from __future__ import annotations

import logging
import math
import platform
import queue
import shutil
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from orchestrator.core.errors import Conflict, MediaLabError, Unavailable
from orchestrator.core.states import JobState
from orchestrator.training.core.dataset import Dataset
from orchestrator.training.core.presets import TrainingSpec
from orchestrator.training.core.progress import TrainingEvent
from orchestrator.training.runtime import checkpoint_files
from orchestrator.training.runtime.dataset_files import write_dataset

log = logging.getLogger(__name__)


class ClaimLost(Conflict):
    """The orchestrator no longer counts this trainer as the job's owner (lease expired, job gone)."""


@dataclass
class Claim:
    job_id: str
    attempt_id: str
    params: dict[str, Any]
    lease_s: float
    heartbeat_s: float

    @property
    def spec(self) -> TrainingSpec:
        return TrainingSpec.model_validate(self.params["spec"])


class Backend(Protocol):
    """How a trainer reaches the orchestrator."""

    name: str

    def claim(self) -> Claim | str | None: ...
    def heartbeat(self, claim: Claim, events: list[dict[str, Any]]) -> bool: ...  # True: cancel
    def download_dataset(self, claim: Claim, dest: Path) -> None: ...
    def download_checkpoint(self, name: str, dest: Path) -> None: ...
    def upload(self, claim: Claim, kind: str, path: Path, step: int | None = None) -> str: ...
    def finish(self, claim: Claim, state: JobState, error: dict[str, Any] | None = None,
               lora_artifact: str | None = None) -> None: ...


def host_info() -> dict[str, Any]:
    return {"host": platform.node(), "python": platform.python_version()}


# -- over HTTP -------------------------------------------------------------------------------------
class HttpBackend:
    """The orchestrator's /v1/trainer API. ``client`` may be any httpx.Client (the tests pass FastAPI's)."""

    def __init__(self, url: str | None, key: str, name: str, gpu_server: str | None = None,
                 client: httpx.Client | None = None, timeout_s: float = 60.0) -> None:
        self.name = name
        self.gpu_server = gpu_server
        self.client = client or httpx.Client(base_url=(url or "").rstrip("/"), timeout=timeout_s)
        self.headers = {"X-API-Key": key}

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code == 409:
            raise ClaimLost(r.json().get("detail", r.text))
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise MediaLabError(f"orchestrator answered {r.status_code}: {detail}")
        return r

    def _post(self, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._check(self.client.post(f"/v1/trainer{path}", headers=self.headers, **kw))
        except httpx.HTTPError as exc:
            raise Unavailable(f"orchestrator unreachable: {exc}") from exc

    def _download(self, path: str, dest: Path, params: dict[str, str] | None = None) -> None:
        try:
            with self.client.stream("GET", f"/v1/trainer{path}", headers=self.headers, params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                self._save(r, dest)
        except httpx.HTTPError as exc:
            raise Unavailable(f"orchestrator unreachable: {exc}") from exc

    @staticmethod
    def _save(r: httpx.Response, dest: Path) -> None:
        """The body into ``dest`` through ``<dest>.part``: a file at ``dest`` is a complete one."""
        tmp = dest.with_name(dest.name + ".part")
        try:
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)

    def claim(self) -> Claim | str | None:
        body = self._post("/claim", json={"trainer": self.name, "gpu_server": self.gpu_server,
                                          "info": host_info()}).json()
        if body.get("wait"):
            return str(body["wait"])
        if not body.get("job"):
            return None
        return Claim(body["job"]["id"], body["attempt_id"], body["job"]["params"], body["lease_s"],
                     body["heartbeat_s"])

    def heartbeat(self, claim: Claim, events: list[dict[str, Any]]) -> bool:
        r = self._post(f"/attempts/{claim.attempt_id}/heartbeat", json={"trainer": self.name, "events": events})
        return bool(r.json().get("cancel"))

    def download_dataset(self, claim: Claim, dest: Path) -> None:
        self._download(f"/attempts/{claim.attempt_id}/dataset", dest, {"trainer": self.name})

    def download_checkpoint(self, name: str, dest: Path) -> None:
        """A file base into ``dest``; a diffusers-folder base (sent as a tar) unpacked into the folder ``dest``."""
        path = f"/v1/trainer/checkpoints/{quote(name, safe='/')}"
        try:
            with self.client.stream("GET", path, headers=self.headers) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                if r.headers.get(checkpoint_files.KIND_HEADER) != "folder":
                    self._save(r, dest)
                    return
                try:
                    checkpoint_files.unpack_folder(checkpoint_files.IterReader(r.iter_bytes(1 << 20)), dest)
                except tarfile.TarError as exc:
                    raise Unavailable(f"the base checkpoint folder {name!r} came incomplete: {exc}") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"orchestrator unreachable: {exc}") from exc

    def upload(self, claim: Claim, kind: str, path: Path, step: int | None = None) -> str:
        with path.open("rb") as f:
            data = {"trainer": self.name, "kind": kind, **({"step": str(step)} if step is not None else {})}
            r = self._post(f"/attempts/{claim.attempt_id}/outputs", data=data, files={"file": (path.name, f)})
        return r.json()["id"]

    def finish(self, claim: Claim, state: JobState, error: dict[str, Any] | None = None,
               lora_artifact: str | None = None) -> None:
        self._post(f"/attempts/{claim.attempt_id}/finish", json={
            "trainer": self.name, "state": state.value, "error": error, "lora_artifact": lora_artifact})


# -- the trainer -------------------------------------------------------------------------------------
Runner = Callable[..., Any]


def default_runner() -> Runner:
    from orchestrator.training.runtime.runner import run_training

    return run_training


@dataclass
class _Reporter:
    """Collects the runner's events (its thread) for the heartbeat thread to send and upload."""

    backend: Backend
    claim: Claim
    cancel: threading.Event
    pending: queue.Queue[TrainingEvent] = field(default_factory=queue.Queue)
    uploaded: set[str] = field(default_factory=set)
    unsent: list[dict[str, Any]] = field(default_factory=list)
    lost: str | None = None

    def on_event(self, event: TrainingEvent) -> None:
        self.pending.put(event)

    def upload(self, kind: str, path: Path, step: int | None = None) -> str | None:
        if str(path) in self.uploaded or not path.is_file():
            return None
        art = self.backend.upload(self.claim, kind, path, step)
        self.uploaded.add(str(path))  # (after: a failed upload may be tried again)
        return art

    def flush(self) -> None:
        """Upload what appeared, send the events, renew the claim; cancel when told to or when lost."""
        events = self.unsent  # (kept until a heartbeat took them: a failed one is tried again with them)
        while True:
            try:
                e = self.pending.get_nowait()
            except queue.Empty:
                break
            if e.kind in ("sample", "checkpoint") and e.path:
                try:
                    self.upload(e.kind, Path(e.path), e.step)
                except ClaimLost:
                    raise
                except MediaLabError as exc:
                    log.warning("upload of %s failed: %s", e.path, exc.message)
                continue
            if e.kind == "progress" and events and events[-1]["kind"] == "progress":
                events[-1] = _event_json(e)  # only the newest bar per heartbeat
            else:
                events.append(_event_json(e))
        cancel = self.backend.heartbeat(self.claim, events)
        self.unsent = []
        if cancel:
            self.cancel.set()

    def loop(self, done: threading.Event) -> None:
        while not done.wait(self.claim.heartbeat_s):
            try:
                self.flush()
            except ClaimLost as exc:
                self.lost = exc.message
                self.cancel.set()
                return
            except MediaLabError as exc:  # unreachable for a moment: the lease covers a few misses
                log.warning("heartbeat failed: %s", exc.message)


def _event_json(e: TrainingEvent) -> dict[str, Any]:
    """An event as JSON can carry it: a diverged run's NaN or infinite loss (or ETA) is left out."""
    return {k: v for k, v in asdict(e).items()
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))}


class Trainer:
    def __init__(self, backend: Backend, *, workdir: Path, sd_scripts_dir: Path, python: str | None = None,
                 tokenizer_cache_dir: Path | None = None, models_dir: Path | None = None, cpu: bool = False,
                 accelerate: bool = False, poll_s: float = 2.0, runner: Runner | None = None) -> None:
        self.backend = backend
        self.workdir = workdir
        self.sd_scripts_dir = sd_scripts_dir
        self.python, self.tokenizer_cache_dir = sd_scripts_env(sd_scripts_dir, python, tokenizer_cache_dir)
        self.models_dir = models_dir
        self.cpu = cpu
        self.accelerate = accelerate
        self.poll_s = poll_s
        self.runner = runner
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Trainer:
        """Run in a background thread (the embedded trainer)."""
        self._thread = threading.Thread(target=self.run_forever, name="trainer", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                got = self.run_once()
            except MediaLabError as exc:
                log.warning("trainer %s: %s", self.backend.name, exc.message)
                got = None
            except Exception:
                log.exception("trainer %s", self.backend.name)
                got = None
            if got is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def run_once(self) -> str | None:
        """Claim and train one job; returns its id, or None when there was nothing to do now."""
        claim = self.backend.claim()
        if claim is None or isinstance(claim, str):
            if claim:
                log.info("trainer %s: %s", self.backend.name, claim)
            return None
        self.train(claim)
        return claim.job_id

    # -- one job -----------------------------------------------------------------------------------
    def base_checkpoint(self, claim: Claim) -> Path:
        """The base from the models folder, else from the checkpoint cache (``<workdir>/checkpoints``, kept
        between runs), downloading it there first: a file or a whole diffusers folder, each moved in place only
        when complete."""
        name = claim.params["base_model"]
        if self.models_dir and (self.models_dir / "checkpoints" / name).exists():
            return self.models_dir / "checkpoints" / name
        cached = self.workdir / "checkpoints" / name
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            self.backend.download_checkpoint(name, cached)
        return cached

    def train(self, claim: Claim) -> JobState:
        """Run one claimed job to its end and report it; never raises for the job's own failure."""
        cancel = threading.Event()
        reporter = _Reporter(self.backend, claim, cancel)
        done = threading.Event()
        beat = threading.Thread(target=reporter.loop, args=(done,), name="trainer-heartbeat", daemon=True)
        beat.start()
        run_dir = self.workdir / "runs" / claim.job_id
        state, error, lora = JobState.FAILED, None, None
        try:
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a retry starts clean
            run_dir.mkdir(parents=True)
            tar = run_dir / "dataset.tar"
            self.backend.download_dataset(claim, tar)
            images = write_dataset(Dataset.from_tar(tar.read_bytes()), run_dir / "dataset")
            base = self.base_checkpoint(claim)
            run = self.runner or default_runner()
            result = run(claim.spec, dataset_dir=images, pretrained_model=base, workdir=run_dir / "work",
                         sd_scripts_dir=self.sd_scripts_dir, python=self.python,
                         tokenizer_cache_dir=self.tokenizer_cache_dir, on_event=reporter.on_event, cancel=cancel,
                         cpu=self.cpu, accelerate=self.accelerate)
            done.set()
            beat.join()
            if reporter.lost:
                log.warning("trainer %s: claim of job %s lost: %s", self.backend.name, claim.job_id, reporter.lost)
                return JobState.FAILED
            _retrying(reporter.flush, claim)  # the last events and files
            for path in getattr(result, "samples", []) or []:
                reporter.upload("sample", Path(path))
            for path in getattr(result, "checkpoints", []) or []:
                reporter.upload("checkpoint", Path(path))
            if getattr(result, "cancelled", False):
                state = JobState.CANCELLED
            else:
                lora = _retrying(lambda: reporter.upload("lora", Path(result.lora)), claim)
                state = JobState.SUCCEEDED
        except ClaimLost as exc:
            log.warning("trainer %s: claim of job %s lost: %s", self.backend.name, claim.job_id, exc.message)
            return JobState.FAILED
        except Exception as exc:  # a failed run (the runner raises with the log tail) or a bug
            message = exc.message if isinstance(exc, MediaLabError) else f"{type(exc).__name__}: {exc}"
            extra = exc.extra if isinstance(exc, MediaLabError) else {}
            error = {"message": message, **{k: v for k, v in extra.items() if _jsonable(v)}}
            if cancel.is_set() and not reporter.lost:
                state, error = JobState.CANCELLED, None
        finally:
            done.set()
            beat.join()
            shutil.rmtree(run_dir, ignore_errors=True)  # every end: what mattered is uploaded or reported
        if reporter.lost:
            return JobState.FAILED
        for attempt in range(5):
            try:
                self.backend.finish(claim, state, error, lora)
                break
            except ClaimLost:
                return JobState.FAILED
            except Unavailable as exc:
                log.warning("finish of job %s failed: %s", claim.job_id, exc.message)
                time.sleep(2 ** attempt)
        return state


def _retrying(call: Callable[[], Any], claim: Claim, tries: int = 5) -> Any:
    """A report after a finished run: a moment of unreachability (Unavailable) is waited out with backoff."""
    for attempt in range(tries):
        try:
            return call()
        except Unavailable as exc:
            if attempt == tries - 1:
                raise
            log.warning("report of job %s failed, retrying: %s", claim.job_id, exc.message)
            time.sleep(2 ** attempt)
    return None


def sd_scripts_env(sd_scripts_dir: Path | None, python: str | None = None,
                   tokenizer_cache_dir: Path | None = None) -> tuple[str, Path | None]:
    """sd-scripts' Python and offline tokenizer folder: as set, else ``<sd_scripts_dir>/.venv/bin/python``
    and ``<sd_scripts_dir>/tokenizers`` when they exist (where scripts/install_sd_scripts.sh puts them),
    else this Python and none."""
    if python is None:
        venv = sd_scripts_dir / ".venv" / "bin" / "python" if sd_scripts_dir else None
        python = str(venv) if venv is not None and venv.exists() else sys.executable
    if tokenizer_cache_dir is None and sd_scripts_dir and (sd_scripts_dir / "tokenizers").is_dir():
        tokenizer_cache_dir = sd_scripts_dir / "tokenizers"
    return python, tokenizer_cache_dir


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | list | dict) or v is None
