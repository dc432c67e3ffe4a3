"""No way out of the sandbox, against real servers: a real ComfyUI, the API, and local HTTP servers.

Reading: a publish-role key tries to read a host file through every file input of ComfyUI's core nodes (as
the live server defines them), a run-role key through a string parameter bound to LoadImage.image: refused
at publish and at submit, with the same message whether or not the file exists. Fetching: the node pack's
fetch against HTTP servers on 127.0.0.1 (allowed origin, another origin, redirects, size and time caps,
the address it connects to), the orchestrator's URL check at submit, and the node in a live ComfyUI.
Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from custom_nodes import urls
from custom_nodes.objects import ObjectError, fetch
from orchestrator.app import jobs as job_app
from orchestrator.app import keys as key_app
from orchestrator.bootstrap import worker_env
from orchestrator.comfy.client import ComfyClient
from orchestrator.core import sandbox
from orchestrator.db import templates as template_db
from orchestrator.settings import Settings
from tests.conftest import png_bytes, start_workers
from tests.integration.conftest import Api, make_api
from tests.integration.test_jobs_api import wait

HOST_FILE = "/etc/passwd"  # exists on every Linux host
MISSING = "/etc/medialab-none"  # the same length, never exists


# -- local HTTP servers ------------------------------------------------------------------------------
class Site:
    """An HTTP server on 127.0.0.1 answering ``routes`` (path -> callable(handler)) and recording requests."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str | None]] = []  # (path, Host header)
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                site.requests.append((self.path, self.headers.get("Host")))
                route = site.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (a limit)
                    route(self)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def body(data: bytes, status: int = 200, length: bool = True) -> Any:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        if length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


def redirect(location: str, status: int = 302) -> Any:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


def trickle(every_s: float, headers_too: bool = False) -> Any:
    """A server that sends a byte every ``every_s`` seconds, for ever (or until the client leaves)."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        if headers_too:
            for b in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"x" * 1000:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(every_s)
        h.send_response(200)
        h.end_headers()
        for _ in range(10_000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(every_s)
    return answer


PNG = png_bytes(24, 16)


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    """``allowed`` (its origin is the allowlist) and ``other`` (not allowed; must never be contacted)."""
    other = Site({"/x.png": body(PNG)})
    allowed = Site({})
    allowed.routes.update({
        "/x.png": body(PNG), "/chunked.png": body(PNG, length=False), "/big": body(b"x" * 5000),
        "/big-chunked": body(b"x" * 5000, length=False), "/slow": trickle(0.2), "/slow-headers": trickle(0.2, True),
        "/to-other": redirect(f"{other.origin}/x.png"), "/to-metadata": redirect("http://169.254.169.254/latest/"),
        "/to-self": redirect("/x.png", 307), "/loop": redirect("/loop"), "/to-file": redirect("file:///etc/passwd"),
        "/short": lambda h: (h.send_response(200), h.send_header("Content-Length", "100"), h.end_headers(),
                             h.wfile.write(b"only ten b")),
    })
    yield allowed, other
    allowed.close()
    other.close()


def policy_for(site: Site, **kw: Any) -> urls.UrlPolicy:
    return urls.UrlPolicy.build([site.origin], private_ok=True, **kw)


def test_the_node_pack_fetches_from_an_allowed_origin_only(sites: tuple[Site, Site], tmp_path: Path) -> None:
    allowed, other = sites
    policy = policy_for(allowed)
    for path in ("/x.png", "/chunked.png", "/to-self"):
        out = fetch(f"{allowed.origin}{path}", tmp_path / "a.png", 1 << 20, policy)
        assert out.read_bytes() == PNG, path
    for url, why in [(f"{other.origin}/x.png", "is not allowed: url_allowlist"),
                     (f"{allowed.origin}/to-other", "is not allowed: url_allowlist"),
                     (f"{allowed.origin}/to-metadata", "is not allowed"),
                     (f"{allowed.origin}/to-file", "only http and https"),
                     (f"{allowed.origin}/loop", "more than 3 redirects"),
                     (f"{allowed.origin}/short", "ended after 10 of 100 bytes"),
                     (f"http://user@127.0.0.1:{allowed.server.server_port}/x.png", "credentials")]:
        with pytest.raises(ObjectError, match=why):
            fetch(url, tmp_path / "b.png", 1 << 20, policy)
        assert not (tmp_path / "b.png").exists(), url  # nothing half-written is left
    assert other.requests == []  # refused before any connection, redirects included
    with pytest.raises(ObjectError, match="loopback address and url_private_ok"):
        fetch(f"{allowed.origin}/x.png", tmp_path / "c.png", 1 << 20, urls.UrlPolicy.build([allowed.origin]))


def test_size_and_time_caps(sites: tuple[Site, Site], tmp_path: Path) -> None:
    allowed, _other = sites
    for path in ("/big", "/big-chunked"):
        with pytest.raises(ObjectError, match="limit of 4096 bytes"):
            fetch(f"{allowed.origin}{path}", tmp_path / "big", 4096, policy_for(allowed))
        with pytest.raises(ObjectError, match="limit of 1000 bytes .url_max_bytes"):
            fetch(f"{allowed.origin}{path}", tmp_path / "big", 1 << 20, policy_for(allowed, max_bytes=1000))
        assert fetch(f"{allowed.origin}{path}", tmp_path / "big", 5000, policy_for(allowed)).stat().st_size == 5000
    for path in ("/slow", "/slow-headers"):  # a server that trickles is cut at the total time limit
        started = time.monotonic()
        with pytest.raises(ObjectError, match="longer than the limit of 1 s .url_timeout_s"):
            fetch(f"{allowed.origin}{path}", tmp_path / "slow", 1 << 20, policy_for(allowed, timeout_s=1.0))
        assert 0.9 < time.monotonic() - started < 3.0, path
        assert not (tmp_path / "slow").exists()


def test_it_connects_to_the_address_it_checked(sites: tuple[Site, Site], tmp_path: Path) -> None:
    """A name is resolved once and checked; the connection goes to that address (no second lookup that a
    rebinding DNS server could answer differently), the Host header still names the host."""
    allowed, _other = sites
    port = allowed.server.server_port
    policy = urls.UrlPolicy.build([f"http://pinned.test:{port}", f"http://localhost:{port}"], private_ok=True)
    lookups: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    fetch_url = f"http://pinned.test:{port}/x.png"
    assert urls.fetch_to_file(fetch_url, tmp_path / "p.png", policy, resolver=resolver) == len(PNG)
    assert lookups == ["pinned.test"] and allowed.requests[-1] == ("/x.png", f"pinned.test:{port}")
    for bad in (["169.254.169.254"], ["127.0.0.1", "169.254.169.254"], ["0.0.0.0"], ["::ffff:169.254.169.254"]):
        before = len(allowed.requests)
        with pytest.raises(urls.UrlRefused, match="resolves to an address that is not allowed"):
            urls.fetch_to_file(fetch_url, tmp_path / "p.png", policy, resolver=lambda h, p, bad=bad: bad)
        assert len(allowed.requests) == before
    # a real lookup: localhost is ::1 and 127.0.0.1; the server listens on the IPv4 one only
    assert urls.fetch_to_file(f"http://localhost:{port}/x.png", tmp_path / "l.png", policy) == len(PNG)


def test_the_node_pack_reads_its_rule_from_the_environment(sites: tuple[Site, Site], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, other = sites
    monkeypatch.setenv("MEDIALAB_URL_ALLOWLIST", f"{allowed.origin},https://shots.example")
    monkeypatch.setenv("MEDIALAB_URL_PRIVATE_OK", "true")
    monkeypatch.setenv("MEDIALAB_URL_MAX_BYTES", "100000")
    assert fetch(f"{allowed.origin}/x.png", tmp_path / "e.png", 1 << 20).read_bytes() == PNG
    with pytest.raises(ObjectError, match="is not allowed"):
        fetch(f"{other.origin}/x.png", tmp_path / "e.png", 1 << 20)
    monkeypatch.setenv("MEDIALAB_URL_MAX_BYTES", "100")
    with pytest.raises(ObjectError, match="limit of 100 bytes"):
        fetch(f"{allowed.origin}/x.png", tmp_path / "e.png", 1 << 20)
    assert other.requests == []


# -- reading host files through the API --------------------------------------------------------------
def publish_key(api: Api) -> dict[str, str]:
    with api.client.app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "test-publish", ["publish"])
        s.commit()
    return {"X-API-Key": key}


def core_file_name_inputs(object_info: dict[str, Any], folders: list[str]) -> list[tuple[str, str]]:
    """Every input of a core node that takes a file name, by the live server's definitions: an upload
    widget, a STRING that takes a path, or a COMBO whose choices are file names, that lists nothing (a models
    folder without files) or that is named after one of the server's model folders (``vae_name``); COMBOs
    of plain choices (samplers, methods) are left out."""
    stems = {f.replace("_", "").rstrip("s") for f in folders}
    found = []
    for cls, names in sandbox.file_inputs(object_info).items():
        if not (object_info[cls].get("python_module") == "nodes"
                or str(object_info[cls].get("python_module")).startswith("comfy_extras")):
            continue
        declared = object_info[cls]["input"]
        spec = {**(declared.get("required") or {}), **(declared.get("optional") or {})}
        for name in sorted(names):
            kind, opts = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {}) or {}
            choices = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
            if choices is None or not choices or any(k.endswith("_upload") for k in opts) \
                    or any("." in str(c) for c in choices) \
                    or name.removesuffix("_name").replace("_", "").rstrip("s") in stems:
                found.append((cls, name))
    return found


def probe_graph(inputs: list[tuple[str, str]], value: str) -> dict[str, Any]:
    graph = {str(i + 1): {"class_type": cls, "inputs": {name: value}, "_meta": {"title": f"{cls}.{name}"}}
             for i, (cls, name) in enumerate(inputs)}
    graph["0"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "probe"},
                  "_meta": {"title": "Output"}}
    return graph


def test_a_publish_key_cannot_read_host_files_through_any_file_input(api: Api, comfy_url: str) -> None:
    client = ComfyClient(comfy_url)
    inputs = core_file_name_inputs(client.object_info(), client.models_folders())
    names = set(inputs)
    assert {("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadImageOutput", "image"), ("LoadVideo", "file"),
            ("CheckpointLoaderSimple", "ckpt_name"), ("LoraLoader", "lora_name"), ("VAELoader", "vae_name"),
            ("UpscaleModelLoader", "model_name"), ("ControlNetLoader", "control_net_name"),
            ("CLIPVisionLoader", "clip_name"), ("UNETLoader", "unet_name"), ("Load3D", "model_file"),
            ("LoadLatent", "latent")} <= names, sorted(names)
    assert len(inputs) > 25
    key = publish_key(api)
    details: dict[str, str] = {}
    for value in (HOST_FILE, MISSING, "../../../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "\\etc\\passwd"):
        r = api.client.post("/v1/templates/probe/versions", headers=key, json={"graph": probe_graph(inputs, value)})
        assert r.status_code == 422, (value, r.text)
        problems = r.json()["problems"]
        assert len(problems) == len(inputs), value  # every one of them, each named
        for i, (cls, name) in enumerate(inputs):
            assert f"node '{cls}.{name}' (#{i + 1} {cls}) input '{name}': {value!r} leaves ComfyUI's folders" \
                in problems[i], problems[i]
        details[value] = r.json()["detail"].replace(repr(value), "<value>")
    assert details[HOST_FILE] == details[MISSING]  # existing or not: the same answer
    assert api.client.get("/v1/templates/probe", headers=key).status_code == 404  # nothing was stored
    one = api.client.post("/v1/templates/probe/versions", headers=key,
                          json={"graph": probe_graph([("LoadImage", "image")], HOST_FILE)})
    assert one.json()["detail"] == ("the graph leaves the sandbox: node 'LoadImage.image' (#1 LoadImage) input "
                                    "'image': '/etc/passwd' leaves ComfyUI's folders: absolute paths and '..' are "
                                    "not allowed")
    fine = api.client.post("/v1/templates/probe/versions", headers=key,
                           json={"graph": probe_graph([("LoadImage", "image")], "frame.png")})
    assert fine.status_code == 201, fine.text  # a name inside the input folder publishes


PATH_TEMPLATE = {
    "graph": {"1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}, "_meta": {"title": "Input"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "path"},
                    "_meta": {"title": "Result"}}},
    "manifest": {"title": "Load by name", "kind": "image", "outputs": [{"node": "Result", "name": "image"}],
                 "parameters": [{"name": "path", "type": "string", "default": "frame.png",
                                 "bind": {"node": "Input", "input": "image"}}]},
}


def test_a_run_key_cannot_pick_a_host_file_through_a_string_parameter(api: Api) -> None:
    r = api.client.post("/v1/templates/load-by-name/versions", headers=api.admin, json=PATH_TEMPLATE)
    assert r.status_code == 201, r.text
    details = {}
    for value in (HOST_FILE, MISSING, "../../../../etc/passwd", "sub/../../x.png", "C:\\Windows\\win.ini"):
        r = api.client.post("/v1/jobs", headers=api.run, json={"template": "load-by-name", "params": {"path": value}})
        assert r.status_code == 422, (value, r.text)
        assert r.json()["detail"].startswith("the graph leaves the sandbox: node 'Input' (#1 LoadImage) input "
                                             f"'image': {value!r} "), r.json()["detail"]
        details[value] = r.json()["detail"].replace(repr(value), "<value>")
    assert details[HOST_FILE] == details[MISSING]
    assert api.client.get("/v1/jobs", headers=api.reader).json() == []  # nothing was queued
    ok = api.client.post("/v1/jobs", headers=api.run, json={"template": "load-by-name", "params": {"path": "x.png"}})
    assert ok.status_code == 201, ok.text  # a name inside the input folder is a job (ComfyUI lacks the file)
    api.client.post(f"/v1/jobs/{ok.json()['id']}/cancel", headers=api.run)

    # a job queued past every check (written straight to the database) is still stopped before ComfyUI sees it
    ctx = api.client.app.state.ctx
    with ctx.db.session() as s:
        row, t = template_db.get_template(s, "load-by-name")
        job = job_app.create_job(s, row, t, {"path": HOST_FILE})
    ctx.dispatcher.wake()
    final = wait(api, job.id)
    assert final["state"] == "FAILED" and "leaves ComfyUI's folders" in final["error"]["message"], final
    attempts = [a["id"] for a in final["attempts"]]
    client = ComfyClient(ctx.pool.servers[0].url)
    assert attempts and not any(client.history(a) for a in attempts)  # the prompt never reached ComfyUI
    events = api.client.get(f"/v1/jobs/{job.id}/events", params={"follow": "false"}, headers=api.reader).json()
    assert not [e for e in events if e["kind"] == "info" and e["reason"] == "submitted"]


def test_trainer_checkpoints_use_the_same_path_rule(api: Api) -> None:
    with api.client.app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "test-train", ["train"])
        s.commit()
    headers = {"X-API-Key": key}
    details = []
    for name in (HOST_FILE, MISSING):
        r = api.client.get(f"/v1/trainer/checkpoints/{name}", headers=headers)  # .../checkpoints//etc/passwd
        assert r.status_code == 422 and "leaves ComfyUI's folders" in r.json()["detail"], r.text
        details.append(r.json()["detail"].replace(name, "<name>"))
    assert details[0] == details[1]
    for name in ("%2e%2e/%2e%2e/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "sub/%2e%2e/%2e%2e/x.safetensors"):
        r = api.client.get(f"/v1/trainer/checkpoints/{name}", headers=headers)
        assert r.status_code == 422, (name, r.status_code, r.text)
    missing = api.client.get("/v1/trainer/checkpoints/none.safetensors", headers=headers)
    assert missing.status_code == 404


def url_template(default: str | None = None) -> dict[str, Any]:
    """MediaLabLoadImage with its source a string parameter (the graph's own value is a placeholder)."""
    param = {"name": "source", "type": "string", "bind": {"node": "Fetch", "input": "source"}}
    return {
        "graph": {"1": {"class_type": "MediaLabLoadImage", "inputs": {"source": "x"}, "_meta": {"title": "Fetch"}},
                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "url"},
                        "_meta": {"title": "Result"}}},
        "manifest": {"title": "Fetch a URL", "kind": "image", "outputs": [{"node": "Result", "name": "image"}],
                     "parameters": [param | ({"default": default} if default else {})]},
    }


def test_urls_in_parameters_are_checked_at_submit(comfy_url: str, settings: Settings,
                                                  sites: tuple[Site, Site]) -> None:
    allowed, other = sites
    port = allowed.server.server_port
    settings.comfy_servers = [comfy_url]
    settings.url_allowlist = [allowed.origin, f"http://localhost:{port}", "http://169.254.169.254"]
    with make_api(settings, dispatch=False) as api:
        bad = api.client.post("/v1/templates/fetch-url/versions", headers=api.admin,
                              json=url_template(f"{other.origin}/x.png"))  # a default is checked at publish
        assert bad.status_code == 422 and "is not allowed: url_allowlist" in bad.json()["detail"], bad.text
        r = api.client.post("/v1/templates/fetch-url/versions", headers=api.admin, json=url_template())
        assert r.status_code == 201, r.text

        def submit(source: str) -> Any:
            return api.client.post("/v1/jobs", headers=api.run,
                                   json={"template": "fetch-url", "params": {"source": source}})

        for source, why in [(f"{other.origin}/x.png", "is not allowed: url_allowlist (MEDIALAB_URL_ALLOWLIST) is"),
                            ("http://169.254.169.254/latest/meta-data/", "link-local"),
                            (f"{allowed.origin}/x.png", "loopback address and url_private_ok"),
                            (f"http://localhost:{port}/x.png", "loopback address and url_private_ok"),  # after DNS
                            (f"http://{allowed.origin.split('//')[1]}@evil.example/", "credentials"),
                            ("/etc/passwd", "neither an object key"), ("sha256/00/x", "neither an object key")]:
            r = submit(source)
            assert r.status_code == 422 and why in r.json()["detail"], (source, r.text)
        settings.url_private_ok = True
        assert submit(f"http://localhost:{port}/x.png").status_code == 201
        assert submit("sha256/ab/ab" + "0" * 62).status_code == 201
    assert allowed.requests == [] and other.requests == []  # the orchestrator checks, it never fetches


# -- the node pack in a live ComfyUI -----------------------------------------------------------------
@pytest.fixture(scope="module")
def fetching_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Site, Site]]:
    """A ComfyUI of its own: its node pack gets the URL rule from the environment the orchestrator gives a
    local worker (worker_env), with an allowlist naming a site started first, which the shared servers
    cannot have. Started in a thread when the module starts, so it boots while the tests above run."""
    other = Site({"/x.png": body(PNG)})
    allowed = Site({"/x.png": body(PNG), "/to-other": redirect(f"{other.origin}/x.png")})
    env = worker_env(Settings(url_allowlist=[allowed.origin], url_private_ok=True, url_timeout_s=10.0))
    box: dict[str, Any] = {}

    def start() -> None:
        try:
            box["workers"] = start_workers(tmp_path_factory, 1, env=env)
        except BaseException as exc:  # noqa: BLE001 (reported when the test asks for it)
            box["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    box["thread"] = thread
    yield box, allowed, other
    thread.join(300)
    for w in box.get("workers", []):
        w.stop()
    allowed.close()
    other.close()


@pytest.fixture(scope="module", autouse=True)
def _boot_early(fetching_worker: Any) -> None:
    """Asks for the worker at the start of the module (see fetching_worker)."""


def run_prompt(url: str, source: str) -> dict[str, Any]:
    graph = {"1": {"class_type": "MediaLabLoadImage", "inputs": {"source": source}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    client = ComfyClient(url)
    pid = f"sandbox-{time.monotonic_ns()}"
    client.submit(graph, pid, "sandbox-test")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entry = client.history(pid)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.2)
    raise AssertionError(f"prompt {pid} did not end")


def test_the_node_in_a_live_comfyui_fetches_only_what_its_rule_allows(fetching_worker: Any) -> None:
    box, allowed, other = fetching_worker
    box["thread"].join(300)
    if "error" in box:
        raise box["error"]
    url = box["workers"][0].url
    ok = run_prompt(url, f"{allowed.origin}/x.png")
    assert ok["status"]["status_str"] == "success", json.dumps(ok["status"])[:2000]
    assert allowed.requests == [("/x.png", allowed.origin.removeprefix("http://"))]
    for source, why in [(f"{other.origin}/x.png", "is not allowed: url_allowlist"),
                        (f"{allowed.origin}/to-other", "is not allowed: url_allowlist"),
                        ("http://169.254.169.254/latest/meta-data/", "is not allowed"),
                        ("../../../../etc/passwd", "neither an object key")]:
        failed = run_prompt(url, source)
        messages = json.dumps(failed["status"].get("messages"))
        assert failed["status"]["status_str"] == "error" and why in messages, (source, messages[:2000])
    assert other.requests == []
