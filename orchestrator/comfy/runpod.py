"""A burst provider on a RunPod serverless endpoint running worker-comfyui 5.x, over plain httpx.

The documented shapes this adapter relies on (``url`` is the endpoint base, ``https://api.runpod.ai/v2/<id>``;
every call carries ``Authorization: Bearer <token>``):

- ``POST {url}/run`` ``{"input": {"workflow": <API graph>, "images": [{"name", "image": <base64>}]}}`` ->
  ``{"id", "status": "IN_QUEUE"}``; the worker writes each image into ComfyUI's input folder under ``name``.
- ``GET {url}/status/{id}`` -> ``{"id", "status": IN_QUEUE|IN_PROGRESS|COMPLETED|FAILED|CANCELLED|TIMED_OUT,
  "delayTime": ms, "executionTime": ms, "output": {"images": [{"filename", "type": "base64"|"s3_url",
  "data"}]}, "error"}``.
- ``POST {url}/cancel/{id}``; ``GET {url}/health`` -> ``{"jobs": {...}, "workers": {"idle", "running", ...}}``.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx

from orchestrator.comfy.provider import (
    RemoteHealth,
    RemoteOutput,
    RemoteRejected,
    RemoteState,
    RemoteStatus,
    RemoteUnreachable,
    Upload,
)
from orchestrator.core.server_urls import redact

STATES = {
    "IN_QUEUE": RemoteState.queued,
    "IN_PROGRESS": RemoteState.running,
    "COMPLETED": RemoteState.succeeded,
    "FAILED": RemoteState.failed,
    "CANCELLED": RemoteState.cancelled,
    "TIMED_OUT": RemoteState.failed,
}


class RunPodProvider:
    """One RunPod serverless endpoint (worker-comfyui). Inputs travel inside the submit as base64 ``images``
    (``upload`` only encodes them), outputs come back inline as base64 or as an S3 URL.

    RunPod has no idempotency key and no job listing, so ``find`` always answers None: a crash between the
    ``/run`` request and recording its id can leave one unrecorded run on the endpoint, whose output is never
    ingested but which may be billed. A ``RemoteUnreachable`` from ``submit`` has the same consequence if the
    caller submits again."""

    kind = "runpod"
    supports_events = False

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.shown = redact(self.url)
        self._token = token or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        # S3 URLs are another origin: fetched without our token
        self._plain = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def _clean(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._token, "***") if self._token else text

    def _call(self, what: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise RemoteUnreachable(self._clean(f"{self.shown}: {what}: {type(exc).__name__}: {exc}")) from exc
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise RemoteUnreachable(self._clean(f"{self.shown}: {what} -> {resp.status_code}: {resp.text[:300]}"),
                                    http_status=resp.status_code)
        if resp.status_code >= 400:
            code, message = _error_of(resp)
            raise RemoteRejected(self._clean(f"{self.shown}: {what} -> {resp.status_code}: {message}"),
                                 code=code, http_status=resp.status_code)
        try:
            data = resp.json()
        except ValueError as exc:
            raise RemoteUnreachable(self._clean(f"{self.shown}: {what}: the answer is not JSON")) from exc
        if not isinstance(data, dict):
            raise RemoteRejected(self._clean(f"{self.shown}: {what}: unexpected answer"), code="invalid_response")
        return data

    def health(self) -> RemoteHealth:
        try:
            data = self._call("GET /health", "GET", "/health")
        except (RemoteUnreachable, RemoteRejected) as exc:
            return RemoteHealth(ok=False, detail=exc.message)
        workers = data.get("workers") if isinstance(data.get("workers"), dict) else {}
        idle = workers.get("idle")
        detail = ", ".join(f"{k} {v}" for k, v in workers.items())
        return RemoteHealth(ok=True, detail=f"workers: {detail}" if detail else "",
                            capacity=idle if isinstance(idle, int) else None)

    def upload(self, data: BinaryIO, filename: str, size: int, sha256: str, content_type: str) -> Upload:
        """Nothing is sent now: the bytes go base64 in the submit's ``images``, the graph names ``filename``."""
        encoded = base64.b64encode(data.read()).decode("ascii")
        return Upload(bind=filename, body={"name": filename, "image": encoded})

    def submit(self, graph: dict[str, Any], key: str, uploads: list[Upload]) -> str:
        """``key`` is not sent: RunPod takes no idempotency key (see the class docstring)."""
        body: dict[str, Any] = {"input": {"workflow": graph}}
        images = [u.body for u in uploads if u.body is not None]
        if images:
            body["input"]["images"] = images
        data = self._call("POST /run", "POST", "/run", json=body)
        job_id = data.get("id")
        if not job_id:
            raise RemoteUnreachable(self._clean(f"{self.shown}: POST /run: no job id in the answer"))
        return str(job_id)

    def find(self, key: str) -> str | None:
        """Always None: RunPod keeps no label of ours and lists no jobs."""
        return None

    def status(self, job_id: str) -> RemoteStatus:
        data = self._call("GET /status/{id}", "GET", f"/status/{job_id}")
        raw = str(data.get("status") or "")
        state = STATES.get(raw)
        if state is None:
            raise RemoteRejected(self._clean(f"{self.shown}: unknown job status {raw[:50]!r}"), code="invalid_response")
        output = data.get("output")
        images = output.get("images") if isinstance(output, dict) else None
        outputs = tuple(
            RemoteOutput(node_id=str(img.get("node_id", "")), filename=str(img.get("filename") or f"output_{i}"),
                         content_type=mimetypes.guess_type(str(img.get("filename") or ""))[0],
                         ref={"type": img.get("type"), "data": img.get("data")})
            for i, img in enumerate(images or []) if isinstance(img, dict))
        error = None
        if state is RemoteState.failed:
            err = data.get("error") or (output.get("error") if isinstance(output, dict) else None)
            error = str(err) if err else raw.lower()
            if raw == "TIMED_OUT":
                error = f"timed out on the endpoint{': ' + error if err else ''}"
            error = self._clean(error[:2000])
        times = [data.get(k) for k in ("delayTime", "executionTime")]
        gpu_s = sum(t for t in times if isinstance(t, int | float)) / 1000 if any(
            isinstance(t, int | float) for t in times) else None
        detail = {k: data.get(k) for k in ("id", "status", "delayTime", "executionTime", "workerId")
                  if data.get(k) is not None}
        return RemoteStatus(state=state, outputs=outputs, error=error, gpu_s=gpu_s, detail=detail)

    def events(self, job_id: str) -> Iterator[RemoteStatus]:
        raise NotImplementedError("RunPod streams no events: poll status")

    def cancel(self, job_id: str) -> None:
        """A request: a job already running may still finish (``status`` says)."""
        self._call("POST /cancel/{id}", "POST", f"/cancel/{job_id}")

    def open_output(self, output: RemoteOutput) -> Iterator[bytes]:
        ref = output.ref if isinstance(output.ref, dict) else {}
        kind, data = ref.get("type"), ref.get("data")
        if not isinstance(data, str):
            raise RemoteRejected(f"{self.shown}: output {output.filename} has no data", code="invalid_response")
        if kind == "s3_url" or (kind != "base64" and data.startswith(("http://", "https://"))):
            yield from self._fetch(data, output.filename)
            return
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            yield base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RemoteRejected(f"{self.shown}: output {output.filename}: bad base64",
                                 code="invalid_response") from exc

    def _fetch(self, url: str, filename: str) -> Iterator[bytes]:
        try:
            with self._plain.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    err = RemoteUnreachable if resp.status_code >= 500 else RemoteRejected
                    raise err(self._clean(f"output {filename}: GET {url.split('?')[0]} -> {resp.status_code}"),
                              http_status=resp.status_code)
                yield from resp.iter_bytes(1 << 20)
        except httpx.TransportError as exc:
            raise RemoteUnreachable(self._clean(f"output {filename}: {type(exc).__name__}: {exc}")) from exc


def _error_of(resp: httpx.Response) -> tuple[str | None, str]:
    """RunPod's refusal as (code, message): its bodies are ``{"error": "..."}`` or plain text."""
    try:
        body = resp.json()
    except ValueError:
        return None, resp.text[:300] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error") or body.get("message") or body.get("detail")
        if isinstance(err, dict):
            return err.get("code"), str(err.get("message") or err)[:300]
        return body.get("code"), str(err or body)[:300]
    return None, str(body)[:300]
