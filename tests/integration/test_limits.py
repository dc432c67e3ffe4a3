"""Limits on every input, through the real API on a real ComfyUI server: refusals are 4xx problems naming the
limit and its value, and a refused request stores nothing (no object, no row); bad server registrations are
refused before they are saved and the pool keeps working; credentials in a server URL are never shown or
logged; a tagged artifact can be deleted; an object the store lost is 404."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from orchestrator.app import keys as key_app
from orchestrator.db.tables import Artifact, Job, ServerRow
from orchestrator.settings import Settings
from tests.conftest import mp4_bytes, png_bytes
from tests.integration.conftest import Api, make_api
from tests.unit.test_limits import bomb_png

PROBLEM = "application/problem+json"


@pytest.fixture
def capped(settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API (no dispatcher) with low limits."""
    settings.comfy_servers = [comfy_url]
    settings.max_video_frames, settings.max_video_seconds, settings.max_video_pixels = 20, 1.0, 64 * 48
    settings.max_tags, settings.max_name_length, settings.max_params = 3, 32, 8
    settings.max_string_length, settings.max_timeout_s, settings.max_heartbeat_events = 1000, 3600.0, 5
    with make_api(settings, dispatch=False) as api:
        yield api


def stored(api: Api) -> tuple[int, int, int]:
    """(objects in the store, artifact rows, job rows)."""
    ctx = api.client.app.state.ctx
    root = ctx.settings.objects / "sha256"
    with ctx.db.session() as s:
        rows = s.exec(select(func.count()).select_from(Artifact)).one()
        jobs = s.exec(select(func.count()).select_from(Job)).one()
    return (sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0), rows, jobs


def problem(r: Any, status: int, limit: str | None = None, value: Any = None) -> dict[str, Any]:
    """The answer is a problem+json of this status; a refusal over a limit names it and its value."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body = r.json()
    if limit is not None:
        assert (body.get("limit"), body.get("value")) == (limit, value), body
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"{limit}={shown}" in body["detail"], body["detail"]
    return body


def upload(api: Api, data: bytes, name: str, tags: str | None = None) -> Any:
    return api.client.post("/v1/artifacts", headers=api.run, files={"file": (name, data)},
                           data={"tags": tags} if tags is not None else None)


def raw(api: Api, method: str, path: str, body: str, headers: dict[str, str] | None = None) -> Any:
    """A JSON body as written (1e400, NaN and 2^64 cannot be sent through a JSON encoder)."""
    return api.client.request(method, path, content=body.encode(), headers={
        **(headers or api.run), "content-type": "application/json"})


# -- uploads ------------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_413_and_nothing_is_stored(capped: Api) -> None:
    before = stored(capped)
    bomb = bomb_png(30000, 30000)
    assert len(bomb) < 100
    problem(upload(capped, bomb, "bomb.png"), 413, "max_image_pixels", 100_000_000)
    capped.client.app.state.ctx.settings.max_image_pixels = 4000
    problem(upload(capped, png_bytes(80, 60), "big.png"), 413, "max_image_pixels", 4000)
    good = png_bytes(64, 48)
    body = problem(upload(capped, good[: len(good) // 2], "cut.png"), 422)
    assert "does not decode" in body["detail"]
    problem(upload(capped, good, "ok.png", "a,b,c,d"), 422, "max_tags", 3)
    problem(upload(capped, good, "ok.png", "x" * 33), 422, "max_name_length", 32)
    assert "control character" in problem(upload(capped, good, "ok.png", "evil\x01tag"), 422)["detail"]
    assert stored(capped) == before  # no orphan object, no row
    assert list((capped.client.app.state.ctx.settings.home / "spool").iterdir()) == []
    ok = upload(capped, good, "ok.png", "a, b")
    assert ok.status_code == 201 and ok.json()["tags"] == ["a", "b"] and ok.json()["width"] == 64


def test_videos_over_each_cap_are_413_by_their_container(capped: Api) -> None:
    before = stored(capped)
    for data, limit, value in ((mp4_bytes(frames=30, fps=60), "max_video_frames", 20),
                               (mp4_bytes(frames=12, fps=10), "max_video_seconds", 1.0),
                               (mp4_bytes(frames=2, w=128, h=48), "max_video_pixels", 64 * 48)):
        problem(upload(capped, data, "clip.mp4"), 413, limit, value)
    assert stored(capped) == before
    fine = upload(capped, mp4_bytes(frames=12, fps=24), "clip.mov")
    assert fine.status_code == 201 and fine.json()["content_type"] == "video/quicktime"
    fake = upload(capped, b"\0" * 4096, "fake.mp4")  # a name is no proof
    assert fake.status_code == 201 and fake.json()["content_type"] == "application/octet-stream"


# -- bodies, parameters and query strings ---------------------------------------------------------------
def train_key(api: Api) -> dict[str, str]:
    with api.client.app.state.ctx.db.session() as s:
        _row, plain = key_app.create_key(s, "trainer-test", ["train"])
    return {"X-API-Key": plain}


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "18446744073709551616"])
def test_non_finite_and_huge_numbers_are_422_in_every_numeric_field(capped: Api, number: str) -> None:
    image = upload(capped, png_bytes(16, 16), "f.png").json()["id"]
    before = stored(capped)
    job = '{"template": "scale-by", "params": {"image": "IMAGE", "scale": 1.0}, '
    bodies = [(path, body.replace("IMAGE", image).replace("NUMBER", number), field) for path, body, field in (
        ("/v1/jobs", job + '"timeout_s": NUMBER}', "timeout_s"),
        ("/v1/jobs", job + '"priority": NUMBER}', "priority"),
        ("/v1/jobs", job + '"version": NUMBER}', "version"),
        ("/v1/jobs", '{"template": "scale-by", "params": {"image": "IMAGE", "scale": NUMBER}}', "scale"),
        ("/v1/trainings", '{"dataset": "d", "base": "b.safetensors", "timeout_s": NUMBER}', "timeout_s"),
        ("/v1/trainings", '{"dataset": "d", "base": "b.safetensors", "priority": NUMBER}', "priority"),
        ("/v1/trainings", '{"dataset": "d", "base": "b.safetensors", "set": {"max_train_steps": NUMBER}}',
         "max_train_steps"),
        ("/v1/datasets", '{"name": "hero", "trigger": "mlchar", "video": "v", "frames": NUMBER}', "frames"),
        ("/v1/datasets", '{"name": "hero", "trigger": "mlchar", "video": "v", "every_n": NUMBER}', "every_n"),
        ("/v1/datasets", '{"name": "hero", "trigger": "mlchar", "images": ["i"], "resolution": NUMBER}',
         "resolution"),
    )]
    for path, body, field in bodies:  # refused for that field (not for the made-up ids)
        assert field in problem(raw(capped, "POST", path, body), 422)["detail"], (path, body)
    trainer = train_key(capped)
    beat = '{"trainer": "t1", "events": [{"kind": "progress", "step": NUMBER, "total": 10}]}'.replace("NUMBER", number)
    assert "step" in problem(raw(capped, "POST", "/v1/trainer/attempts/a1/heartbeat", beat, trainer), 422)["detail"]
    if "e" not in number and "N" not in number:  # integers: form fields, query strings, headers
        step = capped.client.post("/v1/trainer/attempts/a1/outputs", headers=trainer, files={"file": ("s.png", b"x")},
                                  data={"trainer": "t1", "kind": "sample", "step": number})
        problem(step, 422)
        for path in ("/v1/jobs", "/v1/artifacts"):
            problem(capped.client.get(f"{path}?offset={number}", headers=capped.reader), 422)
            problem(capped.client.get(f"{path}?limit={number}", headers=capped.reader), 422)
        events = capped.client.get("/v1/jobs/j1/events?follow=false", headers={**capped.reader,
                                                                              "Last-Event-ID": number})
        problem(events, 422)
    assert stored(capped) == before


def test_an_offset_past_2_63_is_422_and_the_largest_allowed_one_works(capped: Api) -> None:
    for path in ("/v1/jobs", "/v1/artifacts"):
        problem(capped.client.get(f"{path}?offset={2**63}", headers=capped.reader), 422)
        assert capped.client.get(f"{path}?offset={10**9}", headers=capped.reader).json() == []


def test_parameters_names_and_timeouts_over_their_limits_are_422_naming_them(capped: Api) -> None:
    image = upload(capped, png_bytes(16, 16), "f.png").json()["id"]
    before = stored(capped)

    def submit(**body: Any) -> Any:
        return capped.client.post("/v1/jobs", headers=capped.run, json={"template": "scale-by", **body})

    problem(submit(params={"image": image, **{f"p{i}": i for i in range(8)}}), 422, "max_params", 8)
    problem(submit(params={"image": "x" * 1001}), 422, "max_string_length", 1000)
    problem(submit(params={"image": image}, timeout_s=3601), 422, "max_timeout_s", 3600.0)
    problem(capped.client.post("/v1/jobs", headers=capped.run, json={"template": "t" * 33, "params": {}}), 422,
            "max_name_length", 32)
    assert "NUL" in problem(submit(params={"image": "a\x00b"}), 422)["detail"]
    trainer = train_key(capped)
    events = [{"kind": "log", "message": "m"}] * 6
    problem(capped.client.post("/v1/trainer/attempts/a1/heartbeat", headers=trainer,
                               json={"trainer": "t1", "events": events}), 422, "max_heartbeat_events", 5)
    problem(capped.client.post("/v1/trainings", headers=capped.run,
                               json={"dataset": "d", "base": "b.safetensors", "set": {f"o{i}": 1 for i in range(9)}}),
            422, "max_params", 8)
    problem(capped.client.post("/v1/datasets", headers=capped.run,
                               json={"name": "n" * 33, "trigger": "t", "images": ["i"]}), 422, "max_name_length", 32)
    problem(capped.client.get("/v1/jobs?template=" + "t" * 300, headers=capped.reader), 422)
    assert stored(capped) == before
    assert submit(params={"image": image}, timeout_s=3600).status_code == 201


# -- server registrations -----------------------------------------------------------------------------
def servers(api: Api) -> list[dict[str, Any]]:
    r = api.client.get("/v1/servers", headers=api.reader)
    assert r.status_code == 200, r.text
    return r.json()


def test_bad_server_urls_are_refused_nothing_is_saved_and_the_pool_keeps_working(
        capped: Api, comfy_pair: list[str]) -> None:
    first, second = comfy_pair
    port = first.rsplit(":", 1)[1]
    (existing,) = servers(capped)
    for url in (f"{first}\x00", "http://" + "a" * 100_000, f"ftp://127.0.0.1:{port}", f"{first}/?x=1",
                f"{first}#frag", "http://127.0.0.1:0", "http://127.0.0.1:99999", "http://", "gpu1:8188",
                "http://gpu 1:8188"):
        r = capped.client.post("/v1/servers", headers=capped.admin, json={"url": url})
        body = problem(r, 422)
        assert len(r.content) < 2000 and "\x00" not in body["detail"]
    for name in ("n" * 33, "bad\x00name", "   "):
        problem(capped.client.post("/v1/servers", headers=capped.admin, json={"url": second, "name": name}), 422)
    dup = capped.client.post("/v1/servers", headers=capped.admin, json={"url": f"http://localhost:{port}"})
    body = problem(dup, 409)
    assert body["server"] == existing["name"] and existing["name"] in body["detail"]
    with capped.client.app.state.ctx.db.session() as s:
        assert [r.url for r in s.exec(select(ServerRow))] == [first]  # nothing of the above was saved
    same = capped.client.post("/v1/servers", headers=capped.admin, json={"url": f"{first}/"})
    assert same.status_code == 201 and same.json()["id"] == existing["id"]  # one spelling of the same URL
    added = capped.client.post("/v1/servers", headers=capped.admin, json={"url": second, "name": "second"})
    assert added.status_code == 201, added.text
    assert added.json()["healthy"] and added.json()["node_classes"] > 0
    assert {s["name"]: s["healthy"] for s in servers(capped)} == {existing["name"]: True, "second": True}
    assert capped.client.get("/v1/servers/check", headers=capped.reader).status_code == 200
    assert len(capped.client.app.state.ctx.pool.servers) == 2


def test_credentials_in_a_server_url_are_never_shown_nor_logged(settings: Settings, comfy_pair: list[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A job runs on a server registered with credentials; nothing the API answers (job, attempts, events,
    artifacts, servers, checks, audit) and nothing logged holds the password."""
    caplog.set_level(logging.DEBUG)
    first, second = comfy_pair
    settings.comfy_servers = [first.replace("http://", "http://alice:s3cret-pw@")]
    with make_api(settings, dispatch=True) as api:
        image = upload(api, png_bytes(16, 16), "f.png").json()["id"]
        job = api.client.post("/v1/jobs", headers=api.run,
                              json={"template": "scale-by", "params": {"image": image, "scale": 1.0}}).json()
        deadline = time.monotonic() + 120
        while job["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = api.client.get(f"/v1/jobs/{job['id']}", headers=api.reader).json()
        assert job["state"] == "SUCCEEDED", job
        assert job["attempts"][0]["server"] == first.replace("http://", "http://alice:***@")
        added = api.client.post("/v1/servers", headers=api.admin,
                                json={"url": second.replace("http://", "http://bob:hunter2@"), "name": "b"})
        assert added.status_code == 201 and added.json()["url"] == second.replace("http://", "http://bob:***@")
        seen = [added.text, json.dumps(job)]
        for path in (f"/v1/jobs/{job['id']}/events?follow=false", f"/v1/artifacts/{job['outputs'][0]['id']}",
                     "/v1/artifacts", "/v1/jobs", "/v1/servers", "/v1/servers/check", "/v1/servers/b/check",
                     "/v1/audit", "/metrics"):
            r = api.client.get(path, headers=api.admin)
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
    everything = "\n".join(seen + [caplog.text])
    assert "alice" in everything and "s3cret-pw" not in everything and "hunter2" not in everything


# -- deleting and lost objects -------------------------------------------------------------------------
def test_a_tagged_artifact_is_deleted_with_its_tags(capped: Api) -> None:
    art = upload(capped, png_bytes(20, 20), "t.png", "keep,me").json()
    r = capped.client.delete(f"/v1/artifacts/{art['id']}", headers=capped.admin)
    assert r.status_code == 200, r.text
    problem(capped.client.get(f"/v1/artifacts/{art['id']}", headers=capped.reader), 404)
    assert capped.client.get("/v1/artifacts?tag=keep", headers=capped.reader).json() == []
    assert stored(capped)[:2] == (0, 0)


def test_an_object_the_store_lost_is_404_naming_the_artifact(capped: Api) -> None:
    art = upload(capped, png_bytes(24, 24), "l.png").json()
    path: Path = capped.client.app.state.ctx.store.local_path(f"sha256/{art['sha256'][:2]}/{art['sha256']}")
    path.unlink()
    for suffix in ("/content", "/url"):
        body = problem(capped.client.get(f"/v1/artifacts/{art['id']}{suffix}", headers=capped.reader), 404)
        assert art["id"] in body["detail"] and "missing from the object store" in body["detail"]
