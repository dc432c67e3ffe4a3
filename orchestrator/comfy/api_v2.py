"""A burst provider speaking the Comfy API v2 (``/api/v2``: Comfy Cloud, Comfy's serverless deployments, or
``comfy-api-proxy`` in front of a ComfyUI), over ``comfy_low``, the protocol layer of comfy-sdk.

Facts this adapter relies on (comfy-api-proxy 0.1.6 in front of ComfyUI 0.3.75; the same contract elsewhere):

- ``POST /jobs`` with an ``Idempotency-Key`` answers 201; the same key again answers 422
  ``idempotency_key_reuse`` (-> ``KeyAlreadyUsed``). ``metadata`` is an opaque STRING label (the proxy refuses a
  mapping with 422), so it is sent raw: comfy_low's ``post_jobs`` sends a mapping.
- ``GET /jobs`` lists jobs newest first with their ``metadata``; the proxy has no cursor (at most 100 a page,
  ``truncated`` when its scan cap stopped it), the hosted contract pages with ``next_cursor``. ``find`` reads at
  most ``FIND_PAGES`` pages.
- A job's ``status``: queued, running, canceling, succeeded, canceled, failed, expired. The proxy reports no
  ``progress`` and no started/completed times. Outputs carry an asset ``id`` and a ``url``
  (``/api/v2/assets/<id>/content``); a hosted backend may answer that URL with a redirect to a signed URL on
  another origin, which is followed without our bearer token.
- A cancel answers 200 "canceling", but on ComfyUI 0.3.75 the prompt runs to the end and reports "succeeded":
  it is a request, never a fact.
- Inputs are assets: multipart ``POST /assets`` with ``file_path=input/<name>``; a graph names one as
  ``{"__type": "core/ASSET", "info": {"id": ...}}`` in place of the file name.
- With a token, every route but ``/health`` answers 401 without ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn
from urllib.parse import urljoin

import httpx
from comfy_low.errors import ApiError, error_from_envelope
from comfy_low.transport import ComfyLow, origin
from pydantic import ValidationError

from orchestrator.comfy.provider import (
    KeyAlreadyUsed,
    RemoteHealth,
    RemoteOutput,
    RemoteRejected,
    RemoteState,
    RemoteStatus,
    RemoteUnreachable,
    Upload,
)
from orchestrator.core.server_urls import redact

FIND_PAGES = 10  # pages of GET /jobs that find reads before it gives up (100 jobs a page)
FIND_PAGE_SIZE = 100  # the proxy's maximum
MAX_REDIRECTS = 5
INPUT_FOLDER = "input/medialab"
EVENTS_RECONNECTS = 20  # SSE connections one events() call opens before it gives up on the stream
EXPIRED_RECHECK_S = 0.5  # "expired" is read again after this long before it is believed (see ``status``)

STATES = {
    "queued": RemoteState.queued,
    "running": RemoteState.running,
    "canceling": RemoteState.running,  # still running until the provider says otherwise
    "succeeded": RemoteState.succeeded,
    "canceled": RemoteState.cancelled,
    "cancelled": RemoteState.cancelled,
    "failed": RemoteState.failed,
    "expired": RemoteState.failed,
}


def asset_ref(asset_id: str) -> dict[str, Any]:
    """What a graph carries in place of an input file name."""
    return {"__type": "core/ASSET", "info": {"id": asset_id}}


class ApiV2Provider:
    """One Comfy API v2 deployment. ``url`` is its base (``http://host:port``, without ``/api/v2``); ``token`` its
    bearer API key (sent only to ``url``'s origin). ``transport`` replaces the network for tests."""

    kind = "comfy_api_v2"
    supports_events = True

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.shown = redact(self.url)
        self._token = token or None
        self._origin = origin(self.url)
        self._http = httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)
        self._low = ComfyLow(self.url, api_key=self._token, client=self._http, client_info="medialab")
        self._assets: dict[str, str] = {}  # sha256 -> asset id: a batch reuses its inputs
        self._lock = threading.Lock()

    def close(self) -> None:
        self._low.close()
        self._http.close()

    # -- errors ------------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._token, "***") if self._token else text

    def _mapped(self, what: str, exc: Exception) -> Exception:
        """Our error for a comfy_low / httpx one: unknown outcome -> RemoteUnreachable, a no -> RemoteRejected."""
        if isinstance(exc, httpx.TransportError):
            return RemoteUnreachable(self._clean(f"{self.shown}: {what}: {type(exc).__name__}: {exc}"))
        if isinstance(exc, ApiError):
            status, code = exc.http_status, exc.code
            msg = self._clean(f"{self.shown}: {what} -> {status} {code}: {exc}")
            if status >= 500 or status in (408, 429) or (status < 300 and code == "invalid_response"):
                return RemoteUnreachable(msg, code=code, http_status=status, retry_after=exc.retry_after)
            if code == "idempotency_key_reuse":
                return KeyAlreadyUsed(msg, code=code, http_status=status)
            return RemoteRejected(msg, code=code, http_status=status)
        if isinstance(exc, ValidationError | ValueError | KeyError | TypeError):
            return RemoteRejected(self._clean(f"{self.shown}: {what}: unexpected answer: {exc}"[:1000]),
                                  code="invalid_response")
        return exc

    def _raise_for(self, what: str, resp: httpx.Response) -> NoReturn:
        try:
            body = resp.json()
        except Exception:
            body = None
        retry = resp.headers.get("Retry-After")
        err = error_from_envelope(resp.status_code, body if isinstance(body, dict) else None,
                                  retry_after=int(retry) if retry and retry.isdigit() else None,
                                  request_id=resp.headers.get("X-Comfy-Request-Id"),
                                  body_excerpt=None if body is not None else resp.text[:300])
        raise self._mapped(what, err)

    def _call(self, what: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        """One JSON request through comfy_low (which adds the bearer token for our origin only)."""
        try:
            resp = self._low.raw_request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self._mapped(what, exc) from exc
        if resp.status_code not in ok:
            self._raise_for(what, resp)
        try:
            return resp.json() if resp.content else {}
        except ValueError as exc:
            raise RemoteUnreachable(self._clean(f"{self.shown}: {what}: the answer is not JSON")) from exc

    # -- health ------------------------------------------------------------------------------------
    def health(self) -> RemoteHealth:
        """``/health`` (unauthenticated) and one cheap authenticated call, so a bad token reads as unhealthy."""
        try:
            data = self._call("GET /health", "GET", "/health")
            self._call("GET /jobs?limit=1", "GET", "/jobs?limit=1")
        except (RemoteUnreachable, RemoteRejected) as exc:
            return RemoteHealth(ok=False, detail=exc.message)
        status = data.get("status") if isinstance(data, dict) else None
        ok = status in (None, "healthy", "ok")
        return RemoteHealth(ok=ok, detail=f"status {status}" if status else "")

    # -- inputs ------------------------------------------------------------------------------------
    def _asset_exists(self, asset_id: str) -> bool:
        try:
            self._call("GET /assets/{id}", "GET", f"/assets/{asset_id}")
        except RemoteRejected as exc:
            if exc.http_status in (404, 410):
                return False
            raise
        return True

    def upload(self, data: BinaryIO, filename: str, size: int, sha256: str, content_type: str) -> Upload:
        """An asset at ``input/medialab/<filename>``; an input this instance uploaded before (same sha256) is
        reused while the provider still has it (``GET /assets/{id}``), else uploaded again."""
        with self._lock:
            known = self._assets.get(sha256)
        if known is not None and self._asset_exists(known):
            return Upload(bind=asset_ref(known))
        try:
            asset = self._low.post_assets(data, content_type, f"{INPUT_FOLDER}/{filename}", file_size=size)
        except (httpx.TransportError, ApiError, ValidationError) as exc:
            raise self._mapped("POST /assets", exc) from exc
        with self._lock:
            self._assets[sha256] = asset.id
        return Upload(bind=asset_ref(asset.id))

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, graph: dict[str, Any], key: str, uploads: list[Upload]) -> str:
        """``uploads`` are already bound into ``graph`` (their ``bind`` in place of the file names); ``key`` is
        the Idempotency-Key and the job's ``metadata`` label (a string, as the proxy requires)."""
        body = {"workflow": graph, "metadata": key}
        data = self._call("POST /jobs", "POST", "/jobs", ok=(200, 201, 202), json=body,
                          headers={"Idempotency-Key": key})
        try:
            return str(data["id"])
        except (KeyError, TypeError) as exc:
            raise RemoteUnreachable(self._clean(f"{self.shown}: POST /jobs: no job id in the answer")) from exc

    def find(self, key: str) -> str | None:
        """The newest job labelled ``key`` (its ``metadata``), reading at most ``FIND_PAGES`` pages of jobs."""
        cursor: str | None = None
        for _ in range(FIND_PAGES):
            path = f"/jobs?limit={FIND_PAGE_SIZE}" + (f"&cursor={cursor}" if cursor else "")
            page = self._call("GET /jobs", "GET", path)
            for job in page.get("jobs") or []:
                meta = job.get("metadata")
                if meta == key or (isinstance(meta, dict) and key in meta.values()):
                    return str(job["id"])
            cursor = page.get("next_cursor")
            if not cursor:
                return None
        return None

    def status(self, job_id: str) -> RemoteStatus:
        """The job's state. "expired" is confirmed by a second read: comfy-api-proxy 0.1.6 reads ComfyUI's history
        and then its queue, so a job finishing between the two reads is in neither and answers "expired" once."""
        job = self._call("GET /jobs/{id}", "GET", f"/jobs/{job_id}")
        if job.get("status") == "expired":
            time.sleep(EXPIRED_RECHECK_S)
            job = self._call("GET /jobs/{id}", "GET", f"/jobs/{job_id}")
        return self._status_of(job)

    def _status_of(self, job: dict[str, Any]) -> RemoteStatus:
        raw = str(job.get("status") or "")
        state = STATES.get(raw)
        if state is None:
            raise RemoteRejected(self._clean(f"{self.shown}: unknown job status {raw[:50]!r}"), code="invalid_response")
        progress = job.get("progress")
        value = progress.get("value") if isinstance(progress, dict) else None
        outputs = tuple(
            RemoteOutput(node_id=str(o.get("node_id", "")), filename=str(o.get("name") or o.get("filename") or ""),
                         content_type=o.get("content_type"), ref=o.get("id") or o.get("url"))
            for o in job.get("outputs") or [] if isinstance(o, dict))
        error = None
        if state is RemoteState.failed:
            err = job.get("error")
            if isinstance(err, dict):
                error = ": ".join(str(err[k]) for k in ("code", "message") if err.get(k))
            elif err:
                error = str(err)
            if raw == "expired":
                error = f"expired before it ran{': ' + error if error else ''}"
            error = self._clean(error or "failed")
        metrics = job.get("metrics") if isinstance(job.get("metrics"), dict) else {}
        gpu_ms = metrics.get("execution_ms")
        detail = {k: job.get(k) for k in ("id", "status", "queue_position", "created_at", "started_at",
                                           "completed_at", "metrics") if job.get(k) is not None}
        return RemoteStatus(state=state, progress=float(value) if isinstance(value, int | float) else None,
                            outputs=outputs, error=error,
                            gpu_s=gpu_ms / 1000 if isinstance(gpu_ms, int | float) else None, detail=detail)

    def events(self, job_id: str) -> Iterator[RemoteStatus]:
        """Snapshots as the job's SSE stream reports changes (each frame is confirmed with ``GET /jobs/{id}``, so
        every snapshot has the same shape as ``status``'s); a stream that ends or stalls before a terminal state is
        reopened, up to ``EVENTS_RECONNECTS`` times, then ``RemoteUnreachable``."""
        last: RemoteStatus | None = None
        current = self.status(job_id)
        for _ in range(EVENTS_RECONNECTS):
            if last is None or (current.state, current.progress, len(current.outputs)) != (
                    last.state, last.progress, len(last.outputs)):
                yield current
                last = current
            if current.state.terminal:
                return
            try:
                for _frame in self._low.get_job_events(job_id):
                    current = self.status(job_id)
                    if (current.state, current.progress, len(current.outputs)) != (
                            last.state, last.progress, len(last.outputs)):
                        yield current
                        last = current
                    if current.state.terminal:
                        return
            except (httpx.TransportError, ApiError) as exc:
                mapped = self._mapped("GET /jobs/{id}/events", exc)
                if isinstance(mapped, RemoteRejected):  # a no (401, 404): reopening will not help
                    raise mapped from exc
                time.sleep(0.5)  # a stall or a drop: reopen
            current = self.status(job_id)
        raise RemoteUnreachable(self._clean(f"{self.shown}: the event stream of {job_id} kept ending early"))

    def cancel(self, job_id: str) -> None:
        """A request: on ComfyUI 0.3.75 behind the proxy the job answers "canceling" and still runs to the end."""
        self._call("POST /jobs/{id}/cancel", "POST", f"/jobs/{job_id}/cancel")

    # -- outputs -----------------------------------------------------------------------------------
    def open_output(self, output: RemoteOutput) -> Iterator[bytes]:
        """The output's bytes. Redirects are followed by hand: the bearer token goes only to our own origin,
        never to a signed URL elsewhere."""
        ref = str(output.ref)
        url = ref if ref.startswith(("http://", "https://")) else f"{self.url}/api/v2/assets/{ref}/content"
        for _ in range(MAX_REDIRECTS + 1):
            own = origin(url) == self._origin
            headers = {"Authorization": f"Bearer {self._token}"} if own and self._token else {}
            try:
                with self._http.stream("GET", url, headers=headers, follow_redirects=False) as resp:
                    if resp.has_redirect_location:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status_code != 200:
                        resp.read()
                        self._raise_for(f"GET output {output.filename}", resp)
                    yield from resp.iter_bytes(1 << 20)
                    return
            except httpx.TransportError as exc:
                raise self._mapped(f"GET output {output.filename}", exc) from exc
        raise RemoteRejected(self._clean(f"{self.shown}: output {output.filename}: more than {MAX_REDIRECTS} "
                                         "redirects"), code="too_many_redirects")
