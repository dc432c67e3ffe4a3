"""The CLI's API client (cli/remote.py) against httpx.MockTransport: problem+json back to the errors of
core/errors.py with the service's text, no service at the URL, the event stream, downloads, profiles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from orchestrator.cli.remote import Remote, nothing_dispatches, parse_sse, target
from orchestrator.core import errors
from orchestrator.settings import Settings

URL = "http://orch.test:8000"


def remote(handler: Callable[[httpx.Request], httpx.Response], key: str | None = "mlk_test") -> Remote:
    return Remote(URL, key, transport=httpx.MockTransport(handler))


def problem(status: int, detail: str, **extra: object) -> httpx.Response:
    return httpx.Response(status, json={"type": "about:blank", "title": "t", "status": status, "detail": detail,
                                        **extra}, headers={"content-type": "application/problem+json"})


@pytest.mark.parametrize(("status", "cls"), [
    (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound), (409, errors.Conflict),
    (413, errors.TooLarge), (422, errors.InvalidInput), (503, errors.Unavailable), (500, errors.MediaLabError)])
def test_a_problem_becomes_its_error_with_the_services_detail(status: int, cls: type[errors.MediaLabError]) -> None:
    answer = problem(status, f"the service says {status}", limit="max_tags", value=32)
    with remote(lambda _r: answer) as r, pytest.raises(cls) as caught:
        r.job("j1")
    assert type(caught.value) is cls
    assert caught.value.message == f"the service says {status}" and caught.value.status == status
    assert caught.value.extra == {"limit": "max_tags", "value": 32}


def test_a_status_with_no_problem_body_names_the_url_and_the_status() -> None:
    with remote(lambda _r: httpx.Response(502, text="<html>bad gateway</html>")) as r, \
            pytest.raises(errors.MediaLabError) as caught:
        r.servers()
    assert caught.value.status == 502
    assert caught.value.message == f"{URL}/v1/servers answered 502: <html>bad gateway</html>"


def test_no_service_at_the_url_says_how_to_start_one() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with remote(refuse) as r, pytest.raises(errors.Unavailable) as caught:
        r.submit("upscale-esrgan", {})
    assert caught.value.message == (f"no Media Lab service at {URL}: start one with `medialab serve`, or set "
                                    "MEDIALAB_URL")


def test_a_401_without_a_key_says_where_to_put_one() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return problem(401, "an API key is required")

    with remote(handler, key=None) as r, pytest.raises(errors.Unauthorized) as caught:
        r.job("j1")
    assert "x-api-key" not in seen[0].headers
    assert caught.value.message == "an API key is required (set MEDIALAB_API_KEY, or api_key in a profile)"


def test_submit_sends_the_key_the_body_and_the_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=job_json("j1", "QUEUED"))

    with remote(handler) as r:
        job = r.submit("upscale-esrgan", {"scale": 2}, version=2, idempotency_key="batch-7")
    assert job.id == "j1" and job.state.value == "QUEUED"
    req = seen[0]
    assert req.method == "POST" and req.url.path == "/v1/jobs"
    assert req.headers["x-api-key"] == "mlk_test" and req.headers["idempotency-key"] == "batch-7"
    assert json.loads(req.content) == {"template": "upscale-esrgan", "params": {"scale": 2}, "priority": 0,
                                       "version": 2}


def test_upload_is_multipart_and_a_missing_file_is_named(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=artifact_json("a1"))

    f = tmp_path / "frame.png"
    f.write_bytes(b"\x89PNG fake")
    with remote(handler) as r:
        assert r.upload(f).id == "a1"
        with pytest.raises(errors.InvalidInput, match="absent.png"):
            r.upload(tmp_path / "absent.png")
    assert seen[0].headers["content-type"].startswith("multipart/form-data")
    assert b'filename="frame.png"' in seen[0].content and b"\x89PNG fake" in seen[0].content


def test_events_follow_the_stream_and_resume_from_the_last_event_seen() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:  # two events, a ping, then the connection drops
            return httpx.Response(200, stream=Dropping(sse(1, "state", "QUEUED") + b": ping\r\n\r\n" +
                                                       sse(2, "progress", None)))
        return httpx.Response(200, content=sse(3, "state", "SUCCEEDED"))

    with remote(handler) as r:
        events = list(r.events("j1"))
    assert [e.id for e in events] == [1, 2, 3] and events[-1].state.value == "SUCCEEDED"
    assert "last-event-id" not in calls[0].headers and calls[1].headers["last-event-id"] == "2"


def test_download_writes_the_bytes_and_leaves_nothing_when_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/artifacts/a1/content":
            return httpx.Response(200, content=b"image bytes")
        return problem(403, "key 'ci' lacks the role export")

    with remote(handler) as r:
        assert r.download("a1", tmp_path / "out" / "x.png").read_bytes() == b"image bytes"
        with pytest.raises(errors.Forbidden, match="lacks the role export"):
            r.download("a2", tmp_path / "out" / "y.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png"]


def test_nothing_dispatches_names_why() -> None:
    def served(dispatching: bool, servers: list[dict]) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/healthz":
                return httpx.Response(200, json={"status": "ok", "dispatching": dispatching})
            return httpx.Response(200, json=servers)
        return handler

    up = {"name": "gpu1", "state": "active", "healthy": True, "last_error": None}
    down = {"name": "gpu2", "state": "active", "healthy": False, "last_error": "connection refused"}
    drained = {"name": "gpu3", "state": "draining", "healthy": True, "last_error": None}
    with remote(served(False, [up])) as r:
        assert nothing_dispatches(r) == f"nothing dispatches jobs on {URL} (served with --no-dispatch)"
    with remote(served(True, [down, up])) as r:
        assert nothing_dispatches(r) is None
    with remote(served(True, [down, drained])) as r:
        assert nothing_dispatches(r) == (f"no healthy, active ComfyUI server on {URL} can run it (gpu2: active, "
                                         "unhealthy (connection refused); gpu3: draining, healthy)")
    with remote(served(True, [])) as r:
        assert nothing_dispatches(r) == f"no ComfyUI server is registered on {URL}"


def test_parse_sse_skips_comments_and_joins_data_lines() -> None:
    lines = [": ping", "id: 4", "event: info", "data: {\"a\":", "data: 1}", "", ": ping", "", "data: x"]
    assert list(parse_sse(iter(lines))) == [("4", "info", '{"a":\n1}'), ("4", "message", "x")]


def test_where_the_cli_connects(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert target(Settings(config_file=config)).url == "http://127.0.0.1:8000"  # no file, nothing set
    config.write_text('[profiles.default]\nurl = "http://default:8000/"\napi_key = "mlk_d"\n'
                      '[profiles.studio]\nurl = "https://orch.studio:8443"\napi_key = "mlk_s"\n')
    t = target(Settings(config_file=config))
    assert (t.url, t.api_key) == ("http://default:8000", "mlk_d")
    t = target(Settings(config_file=config, url="http://env:9000", api_key="mlk_e"))  # the environment wins...
    assert (t.url, t.api_key, t.source) == ("http://env:9000", "mlk_e", "MEDIALAB_URL")
    t = target(Settings(config_file=config, url="http://env:9000", profile="studio"))  # ...over the default only
    assert (t.url, t.api_key) == ("https://orch.studio:8443", "mlk_s")
    t = target(Settings(config_file=config, profile="studio"), profile="default")  # --profile over MEDIALAB_PROFILE
    assert t.url == "http://default:8000"
    with pytest.raises(errors.InvalidInput, match=r"no profile 'nope' in .*config.toml \(profiles: default, studio\)"):
        target(Settings(config_file=config), profile="nope")
    config.write_text("[profiles\n")
    with pytest.raises(errors.InvalidInput, match="config file"):
        target(Settings(config_file=config))
    with pytest.raises(errors.InvalidInput, match="expected http"):
        target(Settings(config_file=tmp_path / "none.toml", url="orch:8000"))


# -- helpers ---------------------------------------------------------------------------------------------
class Dropping(httpx.SyncByteStream):
    """A response body that breaks off after its bytes, as a dropped connection does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self):  # noqa: ANN204
        yield self.data
        raise httpx.ReadError("connection reset")


def sse(event_id: int, kind: str, state: str | None) -> bytes:
    data = {"id": event_id, "job_id": "j1", "at": "2026-01-01T00:00:00Z", "kind": kind, "state": state,
            "reason": "r", "data": {"fraction": 0.5} if kind == "progress" else None}
    return f"id: {event_id}\r\nevent: {kind}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()


def job_json(job_id: str, state: str) -> dict:
    return {"id": job_id, "template": "upscale-esrgan", "version": 2, "params": {}, "state": state, "priority": 0,
            "progress": 0.0, "cancel_requested": False, "error": None, "created_at": "2026-01-01T00:00:00Z",
            "started_at": None, "finished_at": None}


def artifact_json(art_id: str) -> dict:
    return {"id": art_id, "sha256": "0" * 64, "size": 9, "content_type": "image/png", "filename": "frame.png",
            "role": "input", "width": None, "height": None, "job_id": None, "attempt_id": None, "output_name": None,
            "template": None, "template_version": None, "template_hash": None, "params": None,
            "input_artifacts": None, "server": None, "comfy_version": None, "created_at": "2026-01-01T00:00:00Z"}
