"""What the studio relies on: /v1/me per role, previews (images, a video's first frame, cached once per bytes
and size, any key), the gallery filters of /v1/artifacts (``made_from``: lineage down the chain), the /studio
mount with its deep links, and /docs served offline."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlmodel import select

from orchestrator.app import keys as key_app
from orchestrator.core.previews import preview_origin
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact, Job, JobInput
from orchestrator.runtime import ingest
from orchestrator.runtime import preview as preview_runtime
from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, mp4_bytes, png_bytes
from tests.integration.conftest import Api, make_api

ROLES = ("admin", "run", "publish", "export", "train")


@pytest.fixture
def keys(api_paused: Api) -> dict[str, dict[str, str]]:
    out = {}
    with api_paused.client.app.state.ctx.db.session() as s:
        for role in ROLES:
            _row, plain = key_app.create_key(s, f"studio-{role}", [role])
            out[role] = {"X-API-Key": plain}
    return out


def upload(api: Api, name: str, data: bytes, tags: str | None = None) -> dict:
    r = api.client.post("/v1/artifacts", headers=api.run, files={"file": (name, data)},
                        data={"tags": tags} if tags else None)
    assert r.status_code == 201, r.text
    return r.json()


# -- /v1/me ------------------------------------------------------------------------------------------------
def test_me_per_role(api_paused: Api, keys: dict[str, dict[str, str]]) -> None:
    client = api_paused.client
    assert client.get("/v1/me").status_code == 401
    flags = ("can_run", "can_export", "can_publish", "can_train", "is_admin")
    expected = {"admin": (True,) * 5, "run": (True, False, False, False, False),
                "export": (False, True, False, False, False), "publish": (False, False, True, False, False),
                "train": (False, False, False, True, False)}
    for role, headers in keys.items():
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == f"studio-{role}" and body["roles"] == [role] and body["id"]
        assert tuple(body[f] for f in flags) == expected[role], (role, body)
    body = client.get("/v1/me", headers=api_paused.admin).json()
    assert "hash" not in str(body).lower() and "key_hash" not in body


# -- previews ------------------------------------------------------------------------------------------
def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_preview_of_an_image_is_cached_and_any_key_may_see_it(api_paused: Api, keys: dict[str, dict[str, str]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    api, store = api_paused, api_paused.client.app.state.ctx.store
    art = upload(api, "big.png", png_bytes(2000, 1000))
    calls: list[int] = []
    real = preview_runtime.render

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(preview_runtime, "render", counting)
    url = f"/v1/artifacts/{art['id']}/preview"
    first = api.client.get(url, headers=keys["run"])
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/webp"
    assert first.headers["etag"] == f'"{art["sha256"]}-256"'
    assert "immutable" in first.headers["cache-control"]
    im = decoded(first.content)
    assert im.format == "WEBP" and im.size == (256, 128)
    assert calls == [1]
    with api.client.app.state.ctx.db.session() as s:  # the store has it, under its (sha256, size) origin
        row = artifact_db.preview_of(s, preview_origin(art["sha256"], 256))
        assert row is not None and row.role == "preview" and (row.width, row.height) == (256, 128)
        assert store.exists(row.key)
    for role in ROLES:  # any key; the second and later requests read the cache, the renderer is not called
        again = api.client.get(url, headers=keys[role])
        assert again.status_code == 200 and again.content == first.content, role
    assert calls == [1]
    big = api.client.get(url, params={"size": 1024}, headers=keys["train"])
    assert big.status_code == 200 and decoded(big.content).size == (1024, 512) and calls == [1, 1]
    assert api.client.get(url, params={"size": 300}, headers=keys["run"]).status_code == 422
    # a conditional request: 304, nothing sent
    r = api.client.get(url, headers={**keys["run"], "If-None-Match": first.headers["etag"]})
    assert r.status_code == 304 and r.content == b""
    # previews are not in the gallery unless asked for
    listed = api.client.get("/v1/artifacts", headers=keys["run"]).json()
    assert [a["id"] for a in listed] == [art["id"]]
    assert len(api.client.get("/v1/artifacts", params={"role": "preview"}, headers=keys["run"]).json()) == 2
    # a preview is not a download: a run key still cannot GET the bytes
    assert api.client.get(f"/v1/artifacts/{art['id']}/content", headers=keys["run"]).status_code == 403
    assert api.client.get(f"/v1/artifacts/{art['id']}/url", headers=keys["run"]).status_code == 403


def test_a_lost_preview_object_is_made_again(api_paused: Api) -> None:
    api, store = api_paused, api_paused.client.app.state.ctx.store
    art = upload(api, "small.png", png_bytes(64, 32))
    url = f"/v1/artifacts/{art['id']}/preview"
    first = api.client.get(url, headers=api.reader)
    assert first.status_code == 200 and decoded(first.content).size == (64, 32)  # never enlarged
    with api.client.app.state.ctx.db.session() as s:
        row = artifact_db.preview_of(s, preview_origin(art["sha256"], 256))
    store.delete(row.key)
    again = api.client.get(url, headers=api.reader)
    assert again.status_code == 200 and decoded(again.content).size == (64, 32)
    assert store.exists(row.key)


def test_preview_of_a_video_is_its_first_frame(api_paused: Api) -> None:
    api = api_paused
    art = upload(api, "clip.mp4", mp4_bytes(frames=6, w=320, h=240))
    assert art["content_type"].startswith("video/")
    r = api.client.get(f"/v1/artifacts/{art['id']}/preview", headers=api.reader)
    assert r.status_code == 200, r.text
    im = decoded(r.content).convert("RGB")
    assert im.size == (256, 192)
    r0, g0, b0 = im.getpixel((128, 96))  # the first frame is black (value 0); later ones are lighter
    assert max(r0, g0, b0) < 12, (r0, g0, b0)


def test_no_preview_for_an_artifact_without_a_picture(api_paused: Api) -> None:
    api = api_paused
    art = upload(api, "notes.txt", b"just some text\n")
    r = api.client.get(f"/v1/artifacts/{art['id']}/preview", headers=api.reader)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "no picture" in r.json()["detail"] and "text/plain" in r.json()["detail"]
    assert api.client.get("/v1/artifacts/nope/preview", headers=api.reader).status_code == 404


def test_preview_checks_the_pixel_limit_again(api_paused: Api) -> None:
    """An artifact stored under looser limits is not decoded past the limits in force now."""
    api = api_paused
    art = upload(api, "wide.png", png_bytes(600, 400))
    api.client.app.state.ctx.settings.max_image_pixels = 1000
    r = api.client.get(f"/v1/artifacts/{art['id']}/preview", headers=api.reader)
    assert r.status_code == 413, r.text
    assert "max_image_pixels" in r.json()["detail"]


# -- gallery filters ----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def gallery_api(request: pytest.FixtureRequest, settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API without a dispatcher on each kind of database (the PostgreSQL one skipped without it)."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=False) as api:
        yield api


def test_gallery_filters(gallery_api: Api) -> None:
    api = gallery_api
    ctx = api.client.app.state.ctx
    img = upload(api, "a.png", png_bytes(40, 30))
    vid = upload(api, "b.mp4", mp4_bytes(frames=3))
    txt = upload(api, "c.txt", b"hello")
    with ctx.db.session() as s:
        done = Job(template="t", version=1, params={}, state=JobState.SUCCEEDED)
        failed = Job(template="t", version=1, params={}, state=JobState.FAILED)
        s.add_all([done, failed])
        s.flush()
        outs = {}
        for job, color in ((done, (1, 2, 3)), (failed, (9, 9, 9))):
            out = ingest.store_stream(ctx.store, [png_bytes(16, 16, color)], origin=f"output:{job.id}:1:0",
                                      role="output", filename="out.png", job_id=job.id, template="t")
            s.add(out)
            outs[job.state] = out.id
        old = s.exec(select(Artifact).where(Artifact.id == txt["id"])).one()
        old.created_at = datetime.now(UTC) - timedelta(days=10)
        ds = ingest.store_stream(ctx.store, [b"a tar"], origin="dataset:x", role="dataset", filename="mine-v1.tar",
                                 content_type="application/x-tar", input_artifacts=[img["id"], vid["id"]])
        s.add(ds)
        s.flush()
        artifact_db.add_tags(s, ds.id, ["dataset:mine", "dataset"])
        s.commit()
        ds_id = ds.id

    def ids(**params: str) -> set[str]:
        r = api.client.get("/v1/artifacts", params=params, headers=api.reader)
        assert r.status_code == 200, r.text
        return {a["id"] for a in r.json()}

    assert ids(state="SUCCEEDED") == {outs[JobState.SUCCEEDED]}
    assert ids(state="FAILED") == {outs[JobState.FAILED]}
    assert ids(state="RUNNING") == set()
    assert ids(content_type="image/") == {img["id"], *outs.values()}
    assert ids(content_type="video") == {vid["id"]}
    assert ids(content_type="image/%") == set()  # a prefix, not a pattern
    assert ids(dataset="mine") == ids(dataset=ds_id) == {img["id"], vid["id"]}
    cut = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert ids(created_before=cut) == {txt["id"]}
    assert txt["id"] not in ids(created_after=cut) and img["id"] in ids(created_after=cut)
    assert ids(content_type="image/", state="SUCCEEDED") == {outs[JobState.SUCCEEDED]}
    assert len(ids(limit="2")) == 2
    r = api.client.get("/v1/artifacts", params={"dataset": img["id"]}, headers=api.reader)
    assert r.status_code == 404 and "not a dataset" in r.json()["detail"]
    assert api.client.get("/v1/artifacts", params={"state": "NOPE"}, headers=api.reader).status_code == 422
    assert api.client.get("/v1/artifacts", params={"limit": 501}, headers=api.reader).status_code == 422



# -- lineage down the chain: made_from ----------------------------------------------------------------
def listed(api: Api, **params: str) -> list[str]:
    r = api.client.get("/v1/artifacts", params=params, headers=api.reader)
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()]


def test_made_from_lists_an_upscales_output_under_its_input(api: Api) -> None:
    """A real upscale on the real ComfyUI: its input's ``made_from`` is its output; the output has none."""
    frame = upload(api, "frame.png", png_bytes(64, 48))
    assert listed(api, made_from=frame["id"]) == []  # nothing made from it yet
    r = api.client.post("/v1/jobs", headers=api.run, json={"template": "upscale-esrgan",
                                                           "params": {"image": frame["id"], "model": FIXTURE_MODEL}})
    assert r.status_code == 201, r.text
    deadline, job = time.monotonic() + 120, r.json()
    while job["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = api.client.get(f"/v1/jobs/{job['id']}", headers=api.reader).json()
    assert job["state"] == "SUCCEEDED", job
    (out,) = job["outputs"]
    assert listed(api, made_from=frame["id"]) == [out["id"]]
    assert listed(api, made_from=frame["id"][:8]) == [out["id"]]  # a unique prefix, as the CLI prints
    assert listed(api, made_from=out["id"]) == []
    assert out["input_artifacts"] == [frame["id"]]  # up the chain agrees with down


def test_made_from_filters_newest_first_one_page_and_404s_an_unknown_id(gallery_api: Api) -> None:
    """Only the outputs (not previews or other roles) of the jobs that read it, newest first, paged; an unknown
    id is 404 (not an empty list: a mistyped id must not read as "nothing made from it")."""
    api = gallery_api
    ctx = api.client.app.state.ctx
    src = upload(api, "src.png", png_bytes(20, 20))
    other = upload(api, "other.png", png_bytes(21, 20))
    now = datetime.now(UTC)
    with ctx.db.session() as s:
        jobs = [Job(template="t", version=1, params={}, state=JobState.SUCCEEDED) for _ in range(3)]
        s.add_all(jobs)
        s.flush()
        s.add_all([JobInput(job_id=job.id, artifact_id=art["id"])
                   for job, art in ((jobs[0], src), (jobs[1], src), (jobs[1], other), (jobs[2], other))])
        made: dict[str, str] = {}
        for n, (job, role) in enumerate([(jobs[0], "output"), (jobs[1], "output"), (jobs[1], "output"),
                                         (jobs[1], "input"), (jobs[2], "output")]):
            art = ingest.store_stream(ctx.store, [png_bytes(8, 8, (n, n, n))], origin=f"mf:{n}", role=role,
                                      filename=f"o{n}.png", job_id=job.id, template="t")
            art.created_at = now - timedelta(minutes=10 - n)  # o0 oldest ... o4 newest
            s.add(art)
            made[f"o{n}"] = art.id
        s.commit()
    assert listed(api, made_from=src["id"]) == [made["o2"], made["o1"], made["o0"]]  # newest first; o3 not output
    assert listed(api, made_from=other["id"]) == [made["o4"], made["o2"], made["o1"]]
    assert listed(api, made_from=src["id"], limit="2") == [made["o2"], made["o1"]]
    assert listed(api, made_from=src["id"], limit="2", offset="2") == [made["o0"]]
    assert listed(api, made_from=src["id"], template="nope") == []  # combines with the other filters
    assert listed(api, made_from=made["o0"]) == []
    r = api.client.get("/v1/artifacts", params={"made_from": "ffffffffffff"}, headers=api.reader)
    assert r.status_code == 404 and "unknown artifact" in r.json()["detail"], r.text


# -- /studio and /docs ---------------------------------------------------------------------------------
@pytest.fixture
def dist(api_paused: Api, tmp_path: Path) -> Iterator[Path]:
    """A tiny stand-in for the studio's build, made here (the real one is built by npm)."""
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!DOCTYPE html><div id="root">studio index</div>'
                                     '<script src="/studio/assets/app.js"></script>')
    (root / "assets" / "app.js").write_text("console.log('studio')")
    settings = api_paused.client.app.state.ctx.settings
    before = settings.studio_dir
    settings.studio_dir = root
    yield root
    settings.studio_dir = before


def test_studio_serves_files_and_deep_links(api_paused: Api, dist: Path) -> None:
    client: TestClient = api_paused.client
    for path in ("/studio/", "/studio", "/studio/jobs/01ABC", "/studio/gallery?tag=x"):
        r = client.get(path)  # no key: static files
        assert r.status_code == 200, (path, r.status_code)
        assert "studio index" in r.text and r.headers["content-type"].startswith("text/html"), path
    r = client.get("/studio/assets/app.js")
    assert r.status_code == 200 and r.text == "console.log('studio')"
    assert client.get("/studio/assets/missing.js").status_code == 404  # a missing file is not the page
    assert client.get("/studio/../pyproject.toml").status_code == 404


def test_studio_without_a_build_names_the_setup(api_paused: Api, dist: Path) -> None:
    api_paused.client.app.state.ctx.settings.studio_dir = dist / "nowhere"
    for path in ("/studio/", "/studio/jobs/x"):
        r = api_paused.client.get(path)
        assert r.status_code == 503 and "bash scripts/setup.sh" in r.text, path


EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.I)


def test_docs_offline(api_paused: Api, dist: Path) -> None:
    client = api_paused.client
    r = client.get("/docs")  # the build has no swagger/ yet: a page saying how to get it, no CDN
    assert r.status_code == 503 and "bash scripts/setup.sh" in r.text and "/openapi.json" in r.text
    assert not EXTERNAL.search(r.text), EXTERNAL.search(r.text)
    (dist / "swagger").mkdir()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        (dist / "swagger" / name).write_text(f"/* {name} */")
    r = client.get("/docs")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    assert not EXTERNAL.search(r.text), EXTERNAL.search(r.text)
    assert "/studio/swagger/swagger-ui-bundle.js" in r.text and "'/openapi.json'" in r.text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/studio/swagger/{name}").text == f"/* {name} */"
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


# -- event streams in OpenAPI ---------------------------------------------------------------------------
def test_event_stream_responses_name_the_event_model() -> None:
    """What a stream route declares with ``event_stream_responses``: the generator sees the event's type."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from orchestrator.api.routing import event_stream_responses

    class TickOut(BaseModel):
        seq: int

    app = FastAPI()

    @app.get("/ticks", response_model=None, responses=event_stream_responses(TickOut, "Server-Sent Events"))
    def ticks() -> None: ...

    spec = app.openapi()
    content = spec["paths"]["/ticks"]["get"]["responses"]["200"]["content"]
    assert content["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/TickOut"}
    assert content["application/json"]["schema"]["items"] == {"$ref": "#/components/schemas/TickOut"}
    assert "TickOut" in spec["components"]["schemas"]
