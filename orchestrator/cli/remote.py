"""The CLI's client of a running service (``medialab serve``): the ``/v1`` API over HTTP with an API key.

Where it connects (``target``): a profile named by ``--profile`` or ``MEDIALAB_PROFILE`` in the config file
(``~/.config/medialab/config.toml``, ``[profiles.<name>] url = ..., api_key = ...``); else ``MEDIALAB_URL`` and
``MEDIALAB_API_KEY``; else the file's ``[profiles.default]``; else http://127.0.0.1:8000 with no key.

Every error comes back as the ``MediaLabError`` of ``core/errors.py`` that the service raised (its problem+json
mapped back by status, with the service's own ``detail``); no service at the URL is ``Unavailable`` saying so.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.api.schemas import ArtifactOut, BatchEventOut, BatchOut, EventOut, JobOut, TemplateVersionOut
from orchestrator.core import errors
from orchestrator.core.errors import InvalidInput, MediaLabError, Unavailable
from orchestrator.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_FILE = Path("~/.config/medialab/config.toml")
ERRORS: dict[int, type[MediaLabError]] = {cls.status: cls for cls in (
    errors.Unauthorized, errors.Forbidden, errors.NotFound, errors.Conflict, errors.TooLarge, errors.InvalidInput,
    errors.Unavailable)}
STREAM_RETRIES = 5  # reconnects of one event stream (with Last-Event-ID) before giving up
STREAM_READ_S = 60.0  # silence on an event stream (the service pings every 15 s) that counts as lost


@dataclass(frozen=True)
class Target:
    """Where the CLI connects, and from what it learned it (for messages)."""

    url: str
    api_key: str | None
    source: str  # "profile NAME (FILE)", "MEDIALAB_URL" or "default"


def load_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """The ``[profiles.*]`` tables of the config file; none when the file does not exist."""
    path = path.expanduser()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {path}: {exc}") from exc
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise InvalidInput(f"config file {path}: [profiles.<name>] tables expected")
    return profiles


def target(settings: Settings, profile: str | None = None) -> Target:
    """Where to connect: a named profile (``profile``, else ``settings.profile``), else ``settings.url`` and
    ``settings.api_key``, else the ``default`` profile, else ``DEFAULT_URL``."""
    path = (settings.config_file or CONFIG_FILE).expanduser()
    name = profile or settings.profile
    profiles = load_profiles(path)
    if name:
        if name not in profiles:
            have = ", ".join(sorted(profiles)) or "none"
            raise InvalidInput(f"no profile '{name}' in {path} (profiles: {have})")
        entry, source = profiles[name], f"profile {name} ({path})"
    elif settings.url or settings.api_key or "default" not in profiles:
        entry, source = {}, "MEDIALAB_URL" if settings.url else "default"
    else:
        entry, source = profiles["default"], f"profile default ({path})"
    url = str(entry.get("url") or settings.url or DEFAULT_URL).rstrip("/")
    key = entry.get("api_key") or settings.api_key
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"service URL {url!r} (from {source}): expected http(s)://host[:port]")
    return Target(url, str(key) if key else None, source)


def to_error(r: httpx.Response) -> MediaLabError:
    """The service's problem+json as the matching ``MediaLabError``, with its ``detail`` (and extra fields)."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        extra = {k: v for k, v in body.items() if k not in {"type", "title", "status", "detail"}}
        message = body["detail"]
    else:
        extra, message = {}, f"{r.request.url} answered {r.status_code}: {r.text[:300].strip() or r.reason_phrase}"
    cls = ERRORS.get(r.status_code, MediaLabError)
    exc = cls(message, **extra)
    if cls is MediaLabError:
        exc.status = r.status_code  # a 500 (or any other) keeps its own status
    return exc


class Remote:
    """A typed client of the service's API. ``transport`` may be any httpx transport (the tests pass
    ``httpx.MockTransport``)."""

    def __init__(self, url: str, api_key: str | None, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.has_key = bool(api_key)
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, transport=transport, timeout=timeout_s)

    @classmethod
    def connect(cls, settings: Settings, profile: str | None = None) -> Remote:
        t = target(settings, profile)
        return cls(t.url, t.api_key)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _unreachable(self, exc: httpx.HTTPError) -> Unavailable:
        if isinstance(exc, httpx.ConnectError):
            return Unavailable(f"no Media Lab service at {self.url}: start one with `medialab serve`, or set "
                               "MEDIALAB_URL")
        return Unavailable(f"Media Lab service at {self.url}: {type(exc).__name__}: {exc}")

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code < 400:
            return r
        exc = to_error(r)
        if r.status_code == 401 and not self.has_key:
            exc.message += " (set MEDIALAB_API_KEY, or api_key in a profile)"
        raise exc

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request; a 4xx/5xx raised as its ``MediaLabError``, an unreachable service as ``Unavailable``."""
        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return self._check(r)

    # -- the API -------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``/healthz``: ``status``, and ``dispatching`` (false when served with ``--no-dispatch``)."""
        return self.request("GET", "/healthz").json()

    def template(self, name: str, version: int | None = None) -> TemplateVersionOut:
        path = f"/v1/templates/{name}" + (f"/versions/{version}" if version is not None else "")
        return TemplateVersionOut.model_validate(self.request("GET", path).json())

    def upload(self, path: Path, tags: list[str] | None = None) -> ArtifactOut:
        """Upload an input file (multipart); the same bytes give the same artifact."""
        try:
            f = path.open("rb")
        except OSError as exc:
            raise InvalidInput(f"--input {path}: {exc.strerror or exc}") from exc
        with f:
            data = {"tags": ",".join(tags)} if tags else None
            r = self.request("POST", "/v1/artifacts", files={"file": (path.name, f)}, data=data)
        return ArtifactOut.model_validate(r.json())

    def submit(self, template: str, params: dict[str, Any], version: int | None = None, priority: int = 0,
               timeout_s: float | None = None, idempotency_key: str | None = None) -> JobOut:
        """Queue a job. With ``idempotency_key``, a retried submit of the same body returns the same job."""
        body: dict[str, Any] = {"template": template, "params": params, "priority": priority}
        if version is not None:
            body["version"] = version
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return JobOut.model_validate(self.request("POST", "/v1/jobs", json=body, headers=headers).json())

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def servers(self) -> list[dict[str, Any]]:
        """The pool as the service shows it (``name``, ``state``, ``healthy``, ``last_error``, ...)."""
        return self.request("GET", "/v1/servers").json()

    def events(self, job_id: str, after: int = 0) -> Iterator[EventOut]:
        """The job's events (SSE) from after event ``after`` until the stream ends (after the final state). A
        dropped stream is opened again from the last event seen (``Last-Event-ID``), up to ``STREAM_RETRIES``
        times in a row."""
        timeout = httpx.Timeout(self.client.timeout.connect, read=STREAM_READ_S)
        retries = 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                with self.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                        timeout=timeout) as r:
                    if r.status_code >= 400:
                        r.read()
                        self._check(r)
                    for _id, _kind, data in parse_sse(r.iter_lines()):
                        event = EventOut.model_validate_json(data)
                        after, retries = event.id, 0
                        yield event
                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
                retries += 1
                if retries > STREAM_RETRIES:
                    raise self._unreachable(exc) from exc
                time.sleep(min(2.0**retries / 4, 5.0))
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc

    def create_batch(self, body: dict[str, Any]) -> BatchOut:
        """POST /v1/batches with ``body`` (``BatchSubmit``'s fields; ``dry_run`` writes nothing)."""
        return BatchOut.model_validate(self.request("POST", "/v1/batches", json=body).json())

    def batch(self, batch_id: str, outputs: bool = True) -> BatchOut:
        """A batch (an id prefix is accepted): counts by state, progress, ETA and (``outputs``) its outputs."""
        r = self.request("GET", f"/v1/batches/{batch_id}", params={} if outputs else {"outputs": "false"})
        return BatchOut.model_validate(r.json())

    def batch_events(self, batch_id: str, after: int = 0) -> list[BatchEventOut]:
        """The state events of the batch's jobs after event ``after`` (every page of them), oldest first."""
        events: list[BatchEventOut] = []
        while True:
            r = self.request("GET", f"/v1/batches/{batch_id}/events", params={"follow": "false"},
                             headers={"Last-Event-ID": str(after)})
            page = [BatchEventOut.model_validate(e) for e in r.json()]
            events.extend(page)
            if not page:
                return events
            after = page[-1].event.id

    def batches(self, limit: int = 50, offset: int = 0) -> list[BatchOut]:
        r = self.request("GET", "/v1/batches", params={"limit": limit, "offset": offset})
        return [BatchOut.model_validate(b) for b in r.json()]

    def batch_jobs(self, batch_id: str, state: str | None = None, limit: int = 1000,
                   offset: int = 0) -> list[JobOut]:
        params: dict[str, Any] = {"limit": limit, "offset": offset} | ({"state": state} if state else {})
        r = self.request("GET", f"/v1/batches/{batch_id}/jobs", params=params)
        return [JobOut.model_validate(j) for j in r.json()]

    def cancel_batch(self, batch_id: str) -> BatchOut:
        return BatchOut.model_validate(self.request("POST", f"/v1/batches/{batch_id}/cancel").json())

    def retry_batch(self, batch_id: str) -> BatchOut:
        return BatchOut.model_validate(self.request("POST", f"/v1/batches/{batch_id}/retry").json())

    def download(self, artifact_id: str, dest: Path) -> Path:
        """An artifact's bytes into ``dest`` (written to ``dest.part`` first, so a broken download leaves no
        partial file under the real name)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self.client.stream("GET", f"/v1/artifacts/{artifact_id}/content") as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise self._unreachable(exc) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        return dest


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """Server-Sent Events as ``(id, event, data)``; comments (the service's pings) skipped."""
    event_id: str | None = None
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event_id, kind, "\n".join(data)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)
    if data:
        yield event_id, kind, "\n".join(data)


def nothing_dispatches(remote: Remote) -> str | None:
    """Why nothing will run a job queued on this service now, or None: served with ``--no-dispatch``, or no
    server of its pool healthy and active."""
    if remote.health().get("dispatching") is False:
        return f"nothing dispatches jobs on {remote.url} (served with --no-dispatch)"
    servers = remote.servers()
    if any(s.get("healthy") and s.get("state") == "active" for s in servers):
        return None
    if not servers:
        return f"no ComfyUI server is registered on {remote.url}"
    seen = "; ".join(f"{s.get('name')}: {s.get('state')}, " + ("healthy" if s.get("healthy") else
                     f"unhealthy ({s.get('last_error') or 'no answer'})") for s in servers)
    return f"no healthy, active ComfyUI server on {remote.url} can run it ({seen})"
