"""The one interface of a remote execution endpoint (a burst provider): Comfy API v2 (``api_v2.py``) and RunPod's
worker-comfyui (``runpod.py``). A plain ComfyUI, local or remote behind a token, is not one of these: the engine
drives it natively (``client.py`` and ``monitor.py``: websocket, /history, the direct byte path).

Every call is one request to the provider; nothing here touches the database. ``runtime/provider_runner.py`` follows an
attempt through it and owns every decision (fallback, cancel policy, cost).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO, Protocol

from orchestrator.comfy.client import ComfyError, ComfyUnreachable


class RemoteState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RemoteState.succeeded, RemoteState.failed, RemoteState.cancelled)


@dataclass(frozen=True)
class RemoteOutput:
    """One output file of a finished remote job: ``ref`` is what ``open_output`` needs (a URL that may expire,
    or the bytes themselves when the provider returns them inline, as RunPod's base64)."""

    node_id: str
    filename: str
    content_type: str | None = None
    ref: Any = None


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    progress: float | None = None  # 0..1 where the provider reports it
    outputs: tuple[RemoteOutput, ...] = ()
    error: str | None = None
    gpu_s: float | None = None  # billed seconds where the provider reports them (RunPod: executionTime + delayTime)
    detail: dict[str, Any] = field(default_factory=dict)  # the provider's own answer, trimmed, for the events


@dataclass(frozen=True)
class Upload:
    """One input made available to the provider: ``bind`` goes into the graph in place of the file name (a Comfy
    API v2 asset reference, a file name); ``body`` travels in the submit itself where the provider wants the
    bytes there (RunPod's base64 ``images``), else None."""

    bind: Any
    body: Any = None


@dataclass(frozen=True)
class RemoteHealth:
    ok: bool
    detail: str = ""
    capacity: int | None = None  # jobs it would take now, where the provider says (RunPod: idle workers)


class RemoteUnreachable(ComfyUnreachable):
    """No answer, a timeout or a 5xx: the outcome of the call is unknown (a submit may have landed)."""

    title = "Provider unreachable"


class RemoteRejected(ComfyError):
    """The provider answered no (4xx): a graph it refused, a bad token, an unknown job. ``code`` is its own."""

    status = 502
    title = "Provider refused"

    def __init__(self, message: str, code: str | None = None, http_status: int | None = None, **extra: Any) -> None:
        super().__init__(message, code=code, http_status=http_status, **extra)
        self.code = code
        self.http_status = http_status


class KeyAlreadyUsed(RemoteRejected):
    """A submit with an idempotency key the provider has seen: the job exists there (``find`` looks it up)."""


class Provider(Protocol):
    """A burst provider. ``key`` is our attempt id: the idempotency key of the submit and the label ``find`` looks
    for after a crash, so a retried or recovered submit never runs the work twice where the provider allows it."""

    kind: str
    supports_events: bool

    def health(self) -> RemoteHealth: ...

    def upload(self, data: BinaryIO, filename: str, size: int, sha256: str, content_type: str) -> Upload:
        """Make one input available (``filename`` is ours: its sha256 and suffix, safe as a file name)."""
        ...

    def submit(self, graph: dict[str, Any], key: str, uploads: list[Upload]) -> str:
        """Start the graph (its inputs bound to the uploads' ``bind``); returns the provider's job id.
        ``RemoteUnreachable``: the outcome is unknown (call again with the same key, or ``find``);
        ``KeyAlreadyUsed``: submitted before (``find`` it); ``RemoteRejected``: refused."""
        ...

    def find(self, key: str) -> str | None:
        """The provider's id of the job submitted with ``key``, or None when it has none (or cannot tell)."""
        ...

    def status(self, job_id: str) -> RemoteStatus: ...

    def events(self, job_id: str) -> Iterator[RemoteStatus]:
        """Live status snapshots where the provider streams them (``supports_events``); ends at a terminal one."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the provider to stop the job: a request, not a fact (``status`` says what happened)."""
        ...

    def open_output(self, output: RemoteOutput) -> Iterator[bytes]:
        """The output's bytes, streamed."""
        ...

    def close(self) -> None: ...
