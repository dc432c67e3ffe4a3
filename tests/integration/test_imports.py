"""Bulk import through the real API (and the CLI): a folder of 200 files with sidecars (the same bytes stored once,
sidecar keys and the source as tags), URLs from a local HTTP server on an allowlisted origin, and the refusals
(a path outside import_roots, a symlink out of them, a URL on another origin) that store nothing."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlmodel import func, select

from orchestrator.db.tables import Artifact
from orchestrator.settings import Settings
from tests.conftest import png_bytes
from tests.integration.conftest import Api, make_api

UNIQUE, COPIES = 150, 50


class Redirecting(SimpleHTTPRequestHandler):
    """Files of a folder; ``/to/<path>`` redirects to ``<path>`` on the same origin, ``/away/<path>`` to
    ``<path>`` on http://localhost:<the same port> (another origin, though the same server)."""

    def do_GET(self) -> None:
        for prefix, host in (("/to/", "127.0.0.1"), ("/away/", "localhost")):
            if self.path.startswith(prefix):
                self.send_response(302)
                self.send_header("Location", f"http://{host}:{self.server.server_address[1]}/"
                                 f"{self.path[len(prefix):]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        super().do_GET()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 (an ephemeral port) serving a folder: (its origin, the folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(Redirecting, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(params=["sqlite", "postgresql"])
def importing(request: pytest.FixtureRequest, settings: Settings, comfy_url: str, tmp_path: Path,
              served: tuple[str, Path]) -> Iterator[Api]:
    """The API (no dispatcher) on each kind of database, with tmp_path/in as the one import root and the served
    origin allowlisted (private addresses allowed: it is 127.0.0.1)."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    root = tmp_path / "in"
    root.mkdir()
    settings.import_roots = [str(root)]
    port = served[0].rsplit(":", 1)[1]  # localhost:<port> is allowlisted too: a redirect there is still refused
    settings.url_allowlist, settings.url_private_ok = [served[0], f"http://localhost:{port}"], True
    with make_api(settings, dispatch=False) as api:
        yield api


def rows(api: Api) -> int:
    with api.client.app.state.ctx.db.session() as s:
        return s.exec(select(func.count()).select_from(Artifact)).one()


def tags_of(api: Api, artifact_id: str) -> list[str]:
    return api.client.get(f"/v1/artifacts/{artifact_id}", headers=api.run).json()["tags"]


def test_folder_of_200_files_with_sidecars(importing: Api, tmp_path: Path) -> None:
    root = tmp_path / "in" / "shots"
    (root / "sub").mkdir(parents=True)
    for i in range(UNIQUE + COPIES):  # the last 50 are copies of the first 50, in a subfolder
        folder = root / "sub" if i >= UNIQUE else root
        (folder / f"img_{i:03}.png").write_bytes(png_bytes(16, 16, (i % UNIQUE, 3, 9)))
    for i in range(0, 20):  # sidecars, both namings
        side = root / (f"img_{i:03}.png.json" if i % 2 else f"img_{i:03}.json")
        side.write_text(json.dumps({"scene": f"s{i}", "fps": 24, "motion": 0.5, "nested": {"no": 1}}))
    (root / "notes.txt").write_text("not media")
    before = rows(importing)

    r = importing.client.post("/v1/imports", headers=importing.run,
                              json={"folder": str(root), "tags": ["batch:one"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["counts"] == {"stored": UNIQUE, "already stored": COPIES, "skipped": 1, "failed": 0}, body["counts"]
    assert rows(importing) - before == UNIQUE  # duplicates stored once; sidecars and notes.txt not at all
    by_source = {i["source"]: i for i in body["items"]}
    assert not any(s.endswith(".json") for s in by_source)
    first, copy = by_source[str(root / "img_000.png")], by_source[str(root / "sub" / f"img_{UNIQUE:03}.png")]
    assert copy["status"] == "already stored" and copy["artifact_id"] == first["artifact_id"]
    tags = tags_of(importing, first["artifact_id"])
    assert {"batch:one", f"source:{root / 'img_000.png'}", "scene:s0", "fps:24", "motion:0.5"} <= set(tags)
    assert f"source:{root / 'sub' / f'img_{UNIQUE:03}.png'}" in tags  # the copy's source is kept too
    assert not any(t.startswith("nested:") for t in tags)
    assert "scene:s1" in tags_of(importing, by_source[str(root / "img_001.png")]["artifact_id"])  # x.png.json
    assert by_source[str(root / "notes.txt")]["status"] == "skipped"

    again = importing.client.post("/v1/imports", headers=importing.run,
                                  json={"folder": str(root), "recursive": False}).json()
    assert again["counts"] == {"stored": 0, "already stored": UNIQUE, "skipped": 1, "failed": 0}
    listed = importing.client.get("/v1/artifacts", headers=importing.run, params={"tag": "scene:s3"}).json()
    assert [a["id"] for a in listed] == [by_source[str(root / "img_003.png")]["artifact_id"]]


def test_refusals_store_nothing(importing: Api, tmp_path: Path, served: tuple[str, Path]) -> None:
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "a.png").write_bytes(png_bytes(8, 8, (1, 2, 3)))
    (tmp_path / "in" / "escape").symlink_to(outside, target_is_directory=True)
    inner = tmp_path / "in" / "inner"
    inner.mkdir()
    (inner / "link.png").symlink_to(outside / "a.png")
    before = rows(importing)
    origin, _www = served
    port = int(origin.rsplit(":", 1)[1])
    for body, status, words in [
        ({"folder": str(outside)}, 403, "outside the folders the service may import from"),
        ({"folder": str(tmp_path / "in" / "escape")}, 403, "resolves to"),
        ({"folder": str(tmp_path / "in" / ".." / "out")}, 403, "import_roots"),
        ({"folder": "relative/path"}, 422, "absolute path"),
        ({"urls": [f"http://127.0.0.1:{port + 1}/a.png"]}, 403, "is not allowed"),
        ({"urls": [f"{origin}/a.png", "http://example.com/b.png"]}, 403, "example.com"),
        ({"folder": str(outside), "urls": [f"{origin}/a.png"]}, 422, "either folder or urls"),
    ]:
        r = importing.client.post("/v1/imports", headers=importing.run, json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, (body, r.text)
    assert importing.client.post("/v1/imports", headers=importing.reader,
                                 json={"folder": str(outside)}).status_code == 403  # the run role
    r = importing.client.post("/v1/imports", headers=importing.run, json={"folder": str(inner)})
    assert r.status_code == 200
    assert r.json()["counts"]["failed"] == 1 and "outside import_roots" in r.json()["items"][0]["error"]
    assert rows(importing) == before


def test_urls_on_an_allowlisted_origin(importing: Api, served: tuple[str, Path]) -> None:
    origin, www = served
    for i in range(4):
        (www / f"shot{i}.png").write_bytes(png_bytes(12, 12, (i, 200, 1)))
    (www / "dup.png").write_bytes(png_bytes(12, 12, (0, 200, 1)))
    (www / "page.html").write_text("<html></html>")
    urls = [f"{origin}/shot{i}.png" for i in range(4)] + [f"{origin}/dup.png", f"{origin}/missing.png",
                                                          f"{origin}/page.html", f"{origin}/to/shot1.png",
                                                          f"{origin}/away/shot2.png"]
    before = rows(importing)
    r = importing.client.post("/v1/imports", headers=importing.run, json={"urls": urls, "tags": ["from:web"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["counts"] == {"stored": 4, "already stored": 2, "skipped": 1, "failed": 2}, body
    assert rows(importing) - before == 4
    items = {i["source"]: i for i in body["items"]}
    assert "404" in items[f"{origin}/missing.png"]["error"]
    assert items[f"{origin}/to/shot1.png"]["status"] == "already stored"  # a redirect within the origin
    assert "localhost" in items[f"{origin}/away/shot2.png"]["error"]  # to another origin: refused
    assert {"from:web", f"source:{origin}/shot2.png"} <= set(tags_of(importing, items[f"{origin}/shot2.png"]
                                                                    ["artifact_id"]))


def test_cli_imports_a_folder_here(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.png").write_bytes(png_bytes(8, 8, (i, i, i)))
    (root / "p0.json").write_text('{"camera": "a"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    env.update(MEDIALAB_HOME=str(tmp_path / "home"), MEDIALAB_IMPORT_ROOTS=json.dumps([str(root)]), COLUMNS="200",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # this checkout's code, whatever is installed

    def medialab(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator", "import", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    first = medialab(str(root), "--tag", "cli:yes")
    assert first.returncode == 0, first.stderr
    assert "3 stored, 0 already stored, 0 skipped, 0 failed" in first.stdout
    again = medialab("in")  # relative to the working folder
    assert "0 stored, 3 already stored" in again.stdout, again.stdout + again.stderr
    refused = medialab(str(tmp_path / "home"))
    assert refused.returncode == 1 and "import_roots" in refused.stderr


def test_cli_imports_on_a_service_over_http(tmp_path: Path, comfy_url: str) -> None:
    """MEDIALAB_URL set: the CLI posts the folder to the service (a path on its machine), which imports it."""
    from tests.integration.test_cli_remote import medialab, served, service_with_key

    here = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    root = tmp_path / "shared"
    root.mkdir()
    for i in range(4):
        (root / f"q{i}.png").write_bytes(png_bytes(8, 8, (i, 9, 9)))
    (root / "q0.png.json").write_text('{"take": 3}')
    home, key = service_with_key(tmp_path, "run")
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    service_env = {**here, "MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url]),
                   "MEDIALAB_IMPORT_ROOTS": json.dumps([str(root)])}
    with served(home, "--no-dispatch", env=service_env) as url:
        client = {**here, "MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
        r = medialab(operator, "import", str(root), "--tag", "remote:yes", env=client)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "4 stored, 0 already stored, 0 skipped, 0 failed" in r.stdout
        refused = medialab(operator, "import", str(tmp_path), env=client)
        assert refused.returncode == 1 and "import_roots" in refused.stderr, refused.stderr
        listed = httpx.get(f"{url}/v1/artifacts", params={"tag": "take:3"}, headers={"X-API-Key": key}).json()
        assert len(listed) == 1 and "remote:yes" in listed[0]["tags"]
    assert not (operator / "objects").exists()  # nothing was stored on the operator's side
