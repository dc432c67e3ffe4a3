"""An in-memory burst provider behind OUR ``Provider`` protocol (orchestrator/comfy/provider.py), for fast unit tests.

This fakes our interface, not a provider's HTTP API (tests/fakes/runpod.py and the comfy-api-proxy tests do that):
``FakeProvider`` is what ``Pool(..., make_provider=provider_factory(fake))`` hands a server of kind comfy_api_v2 or
runpod, so the real ``ProviderRunner``, ``Executor`` and ``Dispatcher`` run against it in milliseconds.

Each submitted job takes the next ``RemoteScript`` of the fake's queue (the n-th job submitted takes the n-th
script; none left: it succeeds after one poll with one image). Every call is recorded for assertions:
``uploads``, ``submits`` (with their keys), ``finds``, ``statuses``, ``cancels``, ``opened``.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from orchestrator.comfy.provider import (
    KeyAlreadyUsed,
    Provider,
    RemoteHealth,
    RemoteOutput,
    RemoteRejected,
    RemoteState,
    RemoteStatus,
    RemoteUnreachable,
    Upload,
)
from tests.conftest import png_bytes

OUTPUT_NODE = "4"  # the SaveImage node of upscale-esrgan v1 (and of the other upscale templates)


@dataclass
class RemoteScript:
    """What one provider job does.

    ``outcome``: ``success`` (``images`` PNG files on ``node``), ``fail`` (the provider fails it with ``error``),
    ``hang`` (runs until cancelled or ``FakeProvider.release``d). ``polls``: status calls that answer ``running``
    before the terminal one. ``gpu_s``: the billed seconds its terminal status reports (None: not reported).
    ``ignore_cancel``: a cancel is recorded but the job runs on to its end (Comfy API v2 over ComfyUI 0.3.75).
    ``unreachable_at``: from this status call of the job on (1-based), every call to the provider raises
    ``RemoteUnreachable`` for ``unreachable_s`` seconds (``math.inf``: for good); the job does not advance then.
    ``lose_answer``: the submit lands but its answer is lost (``RemoteUnreachable``); a submit again with the
    same key raises ``KeyAlreadyUsed``. ``reject``: the submit is refused (``RemoteRejected`` with that
    HTTP status).
    """

    outcome: str = "success"
    polls: int = 1
    images: int = 1
    node: str = OUTPUT_NODE
    error: str = "the provider's worker crashed"
    gpu_s: float | None = None
    ignore_cancel: bool = False
    unreachable_at: int | None = None
    unreachable_s: float = math.inf
    lose_answer: bool = False
    reject: int | None = None


@dataclass
class RemoteJob:
    """One job the provider holds."""

    id: str
    key: str
    graph: dict[str, Any]
    uploads: list[Upload]
    script: RemoteScript
    polls: int = 0  # status calls answered about it
    calls: int = 0  # status calls about it, answered or not
    cancel_asked: int = 0
    released: bool = False  # a hanging job told to succeed
    outputs: tuple[RemoteOutput, ...] = ()
    state: RemoteState = RemoteState.queued


@dataclass
class FakeProvider:
    """One fake provider; implements ``Provider``. ``on_status``: called with the job id at each status call,
    before it is answered (a test reads the database there, or asks a cancel)."""

    url: str = "https://cloud-a.test"
    kind: str = "comfy_api_v2"
    supports_events: bool = False
    scripts: deque[RemoteScript] = field(default_factory=deque)
    healthy: bool = True
    find_knows: bool = True  # False: ``find`` answers None whatever it holds (a provider that cannot tell)
    on_status: Callable[[str], None] | None = None
    # what happened, for assertions
    jobs: dict[str, RemoteJob] = field(default_factory=dict)  # provider id -> job
    uploads: list[tuple[str, int, str, str, bytes]] = field(default_factory=list)  # filename, size, sha, type, bytes
    submits: list[str] = field(default_factory=list)  # the key of every submit call (landed or not)
    finds: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    opened: list[RemoteOutput] = field(default_factory=list)
    closed: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._silent_until = 0.0  # monotonic time until which every call raises RemoteUnreachable

    # -- scripting ----------------------------------------------------------------------------------
    def script(self, *scripts: RemoteScript) -> FakeProvider:
        self.scripts.extend(scripts)
        return self

    def preload(self, key: str, script: RemoteScript | None = None) -> str:
        """A job submitted under ``key`` by someone else (a crashed orchestrator): no submit call is recorded."""
        with self._lock:
            return self._create({}, key, [], script or RemoteScript()).id

    def release(self, job_id: str | None = None) -> None:
        """Let hanging jobs (one, or all) succeed at their next status call."""
        with self._lock:
            for job in self.jobs.values():
                if job_id in (None, job.id):
                    job.released = True

    def silence(self, seconds: float = math.inf) -> None:
        """Every call raises RemoteUnreachable for ``seconds`` from now (``math.inf``: until ``speak``)."""
        self._silent_until = time.monotonic() + seconds

    def speak(self) -> None:
        self._silent_until = 0.0

    def by_key(self, key: str) -> RemoteJob | None:
        with self._lock:
            return next((j for j in self.jobs.values() if j.key == key), None)

    # -- Provider -------------------------------------------------------------------------------------
    def health(self) -> RemoteHealth:
        self._check_reachable()
        return RemoteHealth(self.healthy, "fake provider" if self.healthy else "unhealthy", capacity=None)

    def upload(self, data: BinaryIO, filename: str, size: int, sha256: str, content_type: str) -> Upload:
        self._check_reachable()
        body = data.read()
        with self._lock:
            self.uploads.append((filename, size, sha256, content_type, body))
        return Upload(bind=f"asset:{sha256}", body=None)

    def submit(self, graph: dict[str, Any], key: str, uploads: list[Upload]) -> str:
        self._check_reachable()
        with self._lock:
            self.submits.append(key)
            if self.by_key(key) is not None:
                raise KeyAlreadyUsed(f"idempotency key {key} was used before", code="idempotency_key_reused",
                                     http_status=409)
            script = self.scripts.popleft() if self.scripts else RemoteScript()
            if script.reject is not None:
                raise RemoteRejected(f"refused: graph {sorted(graph)}", code="refused", http_status=script.reject)
            job = self._create(graph, key, uploads, script)
        if script.lose_answer:
            raise RemoteUnreachable(f"{self.url}: the answer to the submit was lost")
        return job.id

    def find(self, key: str) -> str | None:
        self._check_reachable()
        with self._lock:
            self.finds.append(key)
            job = self.by_key(key)
            return job.id if job is not None and self.find_knows else None

    def status(self, job_id: str) -> RemoteStatus:
        with self._lock:
            self.statuses.append(job_id)
            job = self.jobs.get(job_id)
            if job is None:
                raise RemoteRejected(f"no job {job_id}", code="not_found", http_status=404)
            job.calls += 1
            s = job.script
            if s.unreachable_at is not None and job.calls == s.unreachable_at:
                self.silence(s.unreachable_s)
        if self.on_status is not None:
            self.on_status(job_id)
        self._check_reachable()
        with self._lock:
            job.polls += 1
            return self._advance(job)

    def events(self, job_id: str) -> Iterator[RemoteStatus]:
        while True:
            status = self.status(job_id)
            yield status
            if status.state.terminal:
                return
            time.sleep(0.005)

    def cancel(self, job_id: str) -> None:
        self._check_reachable()
        with self._lock:
            self.cancels.append(job_id)
            job = self.jobs.get(job_id)
            if job is None:
                raise RemoteRejected(f"no job {job_id}", code="not_found", http_status=404)
            job.cancel_asked += 1

    def open_output(self, output: RemoteOutput) -> Iterator[bytes]:
        self._check_reachable()
        with self._lock:
            self.opened.append(output)
        data: bytes = output.ref
        for i in range(0, len(data), 64):  # streamed in pieces, as a download is
            yield data[i:i + 64]

    def close(self) -> None:
        self.closed += 1

    # -- internals ----------------------------------------------------------------------------------
    def _check_reachable(self) -> None:
        if time.monotonic() < self._silent_until:
            raise RemoteUnreachable(f"{self.url}: connection refused (fake provider silent)")

    def _create(self, graph: dict[str, Any], key: str, uploads: list[Upload], script: RemoteScript) -> RemoteJob:
        job = RemoteJob(f"rj-{next(self._ids)}", key, graph, list(uploads), script)
        self.jobs[job.id] = job
        return job

    def _advance(self, job: RemoteJob) -> RemoteStatus:
        """The job's status after this poll (the lock is held)."""
        s = job.script
        if job.state.terminal:
            return self._terminal(job)
        if job.cancel_asked and not s.ignore_cancel:
            job.state = RemoteState.cancelled
        elif s.outcome == "hang" and not job.released:
            job.state = RemoteState.running
        elif job.polls <= s.polls and not job.released:
            job.state = RemoteState.running
            return RemoteStatus(RemoteState.running, progress=round(job.polls / (s.polls + 1), 4))
        elif s.outcome == "fail":
            job.state = RemoteState.failed
        else:
            job.state = RemoteState.succeeded
            job.outputs = tuple(
                RemoteOutput(s.node, f"upscale_{i + 1:05d}_.png", "image/png",
                             png_bytes(16, 12, (len(self.jobs) * 40 % 256, i * 60 % 256, 90)))
                for i in range(s.images))
        return self._terminal(job) if job.state.terminal else RemoteStatus(RemoteState.running)

    @staticmethod
    def _terminal(job: RemoteJob) -> RemoteStatus:
        s = job.script
        return RemoteStatus(job.state, progress=1.0 if job.state == RemoteState.succeeded else None,
                            outputs=job.outputs, error=s.error if job.state == RemoteState.failed else None,
                            gpu_s=s.gpu_s, detail={"id": job.id, "state": job.state.value})


def provider_factory(*fakes: FakeProvider) -> Callable[[str, str, str | None], Provider]:
    """The ``Pool(make_provider=...)`` seam: each registered provider URL gets its fake (the token is ignored)."""
    by_url = {f.url.rstrip("/"): f for f in fakes}

    def make(kind: str, url: str, token: str | None = None) -> Provider:
        fake = by_url[url.rstrip("/")]
        fake.kind = kind
        return fake

    return make
