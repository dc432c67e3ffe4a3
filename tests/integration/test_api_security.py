"""The API's front door: the key before the body, body caps, roles as the README states them (every route x
every role), problem+json for every error (500s too), the OpenAPI error responses, idempotent submits."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.routing import api_routes
from orchestrator.app import keys as key_app
from orchestrator.db import jobs as job_db
from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api

ROLES = ("admin", "run", "publish", "export", "train")
ANY = set(ROLES)
ADMIN = {"admin"}

# What each route needs, as the README's API section and Security model say (a new route must be added here).
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/metrics"): ANY,
    ("POST", "/v1/artifacts"): {"admin", "run"},
    ("POST", "/v1/imports"): {"admin", "run"},
    ("POST", "/v1/artifacts/{artifact_id}/frames"): {"admin", "run"},
    ("GET", "/v1/artifacts"): ANY,
    ("GET", "/v1/artifacts/{artifact_id}"): ANY,
    ("GET", "/v1/artifacts/{artifact_id}/url"): {"admin", "export"},
    ("GET", "/v1/artifacts/{artifact_id}/content"): {"admin", "export"},
    ("GET", "/v1/artifacts/{artifact_id}/preview"): ANY,  # a preview is not a download
    ("GET", "/v1/me"): ANY,
    ("DELETE", "/v1/artifacts/{artifact_id}"): ADMIN,
    ("POST", "/v1/jobs"): {"admin", "run"},
    ("GET", "/v1/jobs"): ANY,
    ("GET", "/v1/jobs/{job_id}"): ANY,
    ("POST", "/v1/jobs/{job_id}/cancel"): {"admin", "run"},
    ("GET", "/v1/jobs/{job_id}/events"): ANY,
    ("POST", "/v1/batches"): {"admin", "run"},
    ("GET", "/v1/batches"): ANY,
    ("GET", "/v1/batches/{batch_id}"): ANY,
    ("GET", "/v1/batches/{batch_id}/jobs"): ANY,
    ("POST", "/v1/batches/{batch_id}/cancel"): {"admin", "run"},
    ("POST", "/v1/batches/{batch_id}/retry"): {"admin", "run"},
    ("GET", "/v1/batches/{batch_id}/events"): ANY,
    ("GET", "/v1/servers"): ANY,
    ("GET", "/v1/servers/check"): ANY,
    ("GET", "/v1/servers/{ref}/check"): ANY,
    ("POST", "/v1/servers"): ADMIN,
    ("PATCH", "/v1/servers/{ref}"): ADMIN,
    ("GET", "/v1/burst"): ANY,
    ("POST", "/v1/servers/{ref}/drain"): ADMIN,
    ("POST", "/v1/servers/{ref}/activate"): ADMIN,
    ("DELETE", "/v1/servers/{ref}"): ADMIN,
    ("POST", "/v1/servers/{ref}/refresh"): ADMIN,
    ("GET", "/v1/templates"): ANY,
    ("GET", "/v1/templates/{name}"): ANY,
    ("GET", "/v1/templates/{name}/versions/{version}"): ANY,
    ("GET", "/v1/templates/{name}/versions/{version}/workflow"): ANY,
    ("POST", "/v1/templates/{name}/versions"): {"admin", "publish"},
    ("POST", "/v1/templates/{name}/versions/{version}/deprecate"): {"admin", "publish"},
    ("POST", "/v1/templates/{name}/preview"): {"admin", "publish"},
    ("GET", "/v1/templates/{name}/diff"): ANY,
    ("GET", "/v1/pipelines"): ANY,
    ("GET", "/v1/pipelines/{name}"): ANY,
    ("GET", "/v1/pipelines/{name}/versions/{version}"): ANY,
    ("POST", "/v1/pipelines/{name}/versions"): {"admin", "publish"},
    ("POST", "/v1/pipelines/{name}/runs"): {"admin", "run"},
    ("GET", "/v1/pipeline-runs"): ANY,
    ("GET", "/v1/pipeline-runs/{ref}"): ANY,
    ("POST", "/v1/pipeline-runs/{ref}/cancel"): {"admin", "run"},
    ("POST", "/v1/pipeline-runs/{ref}/resume"): {"admin", "run"},
    ("POST", "/v1/datasets"): {"admin", "run"},
    ("GET", "/v1/datasets"): ANY,
    ("POST", "/v1/trainings"): {"admin", "run"},
    ("GET", "/v1/trainings"): ANY,
    ("POST", "/v1/trainer/claim"): {"admin", "train"},
    ("GET", "/v1/trainer/attempts/{attempt_id}/dataset"): {"admin", "train"},
    ("GET", "/v1/trainer/checkpoints/{name}"): {"admin", "train"},
    ("POST", "/v1/trainer/attempts/{attempt_id}/heartbeat"): {"admin", "train"},
    ("POST", "/v1/trainer/attempts/{attempt_id}/outputs"): {"admin", "train"},
    ("POST", "/v1/trainer/attempts/{attempt_id}/finish"): {"admin", "train"},
    ("GET", "/v1/models"): ANY,
    ("GET", "/v1/models/{ref}"): ANY,
    ("POST", "/v1/models/{ref}/approve"): {"admin", "publish"},
    ("POST", "/v1/models/{ref}/withdraw"): {"admin", "publish"},
    ("POST", "/v1/models/{ref}/distribute"): ADMIN,
    ("GET", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys/{ref}"): ADMIN,
    ("POST", "/v1/keys"): ADMIN,
    ("POST", "/v1/keys/{ref}/revoke"): ADMIN,
    ("POST", "/v1/keys/{ref}/rotate"): ADMIN,
    ("GET", "/v1/audit"): ADMIN,
}


@pytest.fixture
def keys(api_paused: Api) -> dict[str, dict[str, str]]:
    """One key per role."""
    out = {}
    with api_paused.client.app.state.ctx.db.session() as s:
        for role in ROLES:
            _row, plain = key_app.create_key(s, f"matrix-{role}", [role])
            out[role] = {"X-API-Key": plain}
    return out


def test_every_route_x_every_role(api_paused: Api, keys: dict[str, dict[str, str]]) -> None:
    """No key: 401; a role the route does not allow: 403; an allowed one gets past the door (whatever the
    route then says of the made-up ids). Every route of the app is in the table, and every row is a route."""
    client = api_paused.client
    routes = {(m, path) for path, methods, route in api_routes(client.app.routes)
              for m in methods if path not in ("/healthz",)}
    assert routes == set(EXPECTED), {"untested": routes - set(EXPECTED), "gone": set(EXPECTED) - routes}
    for method, path in sorted(EXPECTED):
        url = path.replace("{version}", "1").replace("{name}", "nope")
        for param in ("artifact_id", "job_id", "batch_id", "ref", "attempt_id"):
            url = url.replace("{" + param + "}", "made-up")
        r = client.request(method, url)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        for role, headers in keys.items():
            r = client.request(method, url, headers=headers, json={} if method == "POST" else None)
            if role in EXPECTED[(method, path)]:
                assert r.status_code not in (401, 403), (method, path, role, r.status_code, r.text[:200])
            else:
                assert r.status_code == 403, (method, path, role, r.status_code, r.text[:200])
                assert "lacks the role" in r.json()["detail"]


def test_a_run_key_cannot_download_bytes(api_paused: Api, keys: dict[str, dict[str, str]]) -> None:
    api = api_paused
    art = api.client.post("/v1/artifacts", headers=keys["run"], files={"file": ("f.png", png_bytes())}).json()
    assert api.client.get(f"/v1/artifacts/{art['id']}/content", headers=keys["run"]).status_code == 403
    assert api.client.get(f"/v1/artifacts/{art['id']}/url", headers=keys["run"]).status_code == 403
    r = api.client.get(f"/v1/artifacts/{art['id']}/content", headers=keys["export"])
    assert r.status_code == 200 and r.content == png_bytes()


def test_unknown_revoked_and_malformed_keys(api_paused: Api) -> None:
    client = api_paused.client
    for headers in ({"X-API-Key": "mlk_nope"}, {"Authorization": "Bearer mlk_nope"}, {"Authorization": "Basic x"}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json", headers


def test_a_500_is_problem_json(api_paused: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(job_db, "list_jobs", broken)
    client = TestClient(api_paused.client.app, raise_server_exceptions=False)
    r = client.get("/v1/jobs", headers=api_paused.admin)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Internal error" and "RuntimeError" in r.json()["detail"]
    assert "a bug" not in r.text  # the exception's text stays in the log


def test_unknown_route_and_method_are_problem_json(api_paused: Api) -> None:
    r = api_paused.client.get("/v1/nothing-here", headers=api_paused.admin)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = api_paused.client.put("/v1/jobs", headers=api_paused.admin)
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"


def test_openapi_declares_the_error_responses(api_paused: Api) -> None:
    doc = api_paused.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)
    assert "Problem" in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "500"} <= codes, (method, path, codes)
            if "{" in path or method != "get":
                assert {"404", "503"} <= codes, (method, path, codes)
            problem = op["responses"]["422"]["content"]["application/problem+json"]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}
            if method != "get":
                assert {"409", "413"} <= codes, (method, path)
    assert not {"403", "404", "409"} & set(doc["paths"]["/v1/jobs"]["get"]["responses"])  # any key lists
    assert "403" in doc["paths"]["/v1/jobs"]["post"]["responses"]


def test_idempotent_submit(api_paused: Api, keys: dict[str, dict[str, str]]) -> None:
    api = api_paused
    frame = api.client.post("/v1/artifacts", headers=api.run, files={"file": ("f.png", png_bytes())}).json()
    body = {"template": "upscale-esrgan", "params": {"image": frame["id"], "model": FIXTURE_MODEL}}
    first = api.client.post("/v1/jobs", headers={**api.run, "Idempotency-Key": "k-1"}, json=body)
    assert first.status_code == 201
    again = api.client.post("/v1/jobs", headers={**api.run, "Idempotency-Key": "k-1"},
                            json={"params": body["params"], "template": "upscale-esrgan"})  # same body, other order
    assert again.status_code in (200, 201) and again.json()["id"] == first.json()["id"]
    other = api.client.post("/v1/jobs", headers={**api.run, "Idempotency-Key": "k-1"}, json={**body, "priority": 5})
    assert other.status_code == 422 and "Idempotency-Key 'k-1' was used" in other.json()["detail"]
    # the key is per API key: another caller's k-1 is another job
    theirs = api.client.post("/v1/jobs", headers={**keys["admin"], "Idempotency-Key": "k-1"}, json=body)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    plain = api.client.post("/v1/jobs", headers=api.run, json=body)
    assert plain.json()["id"] != first.json()["id"]  # no key: a new job every time
    jobs = api.client.get("/v1/jobs", headers=api.run).json()
    assert len(jobs) == 3


# -- the key before the body, over a real socket ---------------------------------------------------
@contextmanager
def serve(settings: Settings) -> Iterator[tuple[int, Any]]:
    """The app under uvicorn in a thread, no dispatcher; yields (port, app)."""
    app = create_app(settings, dispatch=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield port, app
    finally:
        server.should_exit = True
        thread.join(30)


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """Send ``head`` (and ``body``) and read the answer without sending more: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_the_key_and_the_size_are_checked_before_the_body(settings: Settings, comfy_url: str) -> None:
    settings.comfy_servers = [comfy_url]
    settings.max_body_bytes = 4096
    settings.max_upload_bytes = 1 << 20
    with serve(settings) as (port, app):
        with app.state.ctx.db.session() as s:
            run = key_app.create_key(s, "run", ["run"])[1]
            export = key_app.create_key(s, "export", ["export"])[1]
        upload = ("POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  "Content-Length: 10737418240\r\n{auth}")
        # 10 GiB announced, not one byte of it sent: each answer comes at once
        status, body = raw_request(port, upload.format(auth=""))
        assert status == 401 and "API key is required" in body["detail"]
        status, body = raw_request(port, upload.format(auth=f"X-API-Key: {export}\r\n"))
        assert status == 403
        status, body = raw_request(port, upload.format(auth=f"X-API-Key: {run}\r\n"))
        assert status == 413 and body["limit"] == "max_upload_bytes" and body["value"] == 1 << 20
        # a JSON body streamed (chunked, no Content-Length) past max_body_bytes
        chunk = b"x" * 3000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        status, body = raw_request(port, f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {run}\r\n"
                                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", chunked)
        assert status == 413 and body["limit"] == "max_body_bytes" and "4096" in body["detail"]
        # under the limits, the same door lets it through
        status, body = raw_request(port, f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {run}\r\n"
                                   "Content-Type: application/json\r\nContent-Length: 2\r\n", b"{}")
        assert status == 422


def test_control_characters_in_the_url_are_refused(api_paused: Api) -> None:
    client = api_paused.client
    for url in ("/v1/jobs/abc%00def", "/v1/jobs?template=a%00b", "/v1/servers/x%0ay/check", "/v1/jobs?state=%7f"):
        r = client.get(url, headers=api_paused.admin)
        assert r.status_code == 422, (url, r.status_code)
        assert r.headers["content-type"] == "application/problem+json" and "control character" in r.json()["detail"]


def test_a_multipart_header_does_not_lift_the_json_cap(settings: Settings, comfy_url: str) -> None:
    """The route decides which cap applies, never the caller's Content-Type."""
    settings.comfy_servers = [comfy_url]
    settings.max_body_bytes = 4096
    with serve(settings) as (port, app):
        with app.state.ctx.db.session() as s:
            run = key_app.create_key(s, "run", ["run"])[1]
        status, body = raw_request(port, f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {run}\r\n"
                                   "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n")
        assert status == 413 and body["limit"] == "max_body_bytes"


def test_server_credentials_never_reach_an_error(api_paused: Api) -> None:
    """A refusal that names the pool's servers (a model no server has) shows their URLs without credentials."""
    api = api_paused
    r = api.client.post("/v1/servers", headers=api.admin, json={"url": "http://alice:s3cret@127.0.0.1:9", "name": "c"})
    assert r.status_code == 201, r.text
    frame = api.client.post("/v1/artifacts", headers=api.run, files={"file": ("f.png", png_bytes())}).json()
    r = api.client.post("/v1/jobs", headers=api.run, json={
        "template": "upscale-esrgan", "params": {"image": frame["id"], "model": "no-such-model.pth"}})
    assert r.status_code == 422, r.text
    assert "http://alice:***@127.0.0.1:9" in r.json()["detail"] and "s3cret" not in r.text
    for path in ("/v1/servers", "/v1/servers/check", "/v1/audit"):
        assert "s3cret" not in api.client.get(path, headers=api.admin).text, path
