"""Pipelines through the API on a real service (a real ComfyUI server in its pool; SQLite, and PostgreSQL
where it runs): the shipped library synced at start, publish, list, show, and the refusals, each named."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.app import pipelines as pipeline_app
from orchestrator.core import pipelines as pl
from orchestrator.core.errors import Conflict
from orchestrator.runtime import pipeline_library
from orchestrator.settings import PROJECT_ROOT, Settings
from tests.integration.conftest import Api, make_api

CHAIN: dict[str, Any] = {
    "description": "restyle, then upscale",
    "inputs": [{"name": "frame", "type": "image"}],
    "steps": [
        {"id": "restyle", "template": "restyle-ipadapter", "version": 1, "params": {"image": {"input": "frame"}}},
        {"id": "upscale", "template": "upscale-esrgan", "version": 2,
         "params": {"image": {"step": "restyle", "output": "image"}}},
    ],
    "outputs": [{"name": "upscaled", "step": "upscale", "output": "upscaled"}],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API (no dispatcher) on each database."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=False) as api:
        yield api


def test_the_shipped_library_is_synced_at_start(api: Api) -> None:
    listed = {p["name"]: p for p in api.client.get("/v1/pipelines", headers=api.reader).json()}
    assert set(listed) == {"restyle-upscale", "interpolate-upscale-video", "blend-generate-lora"}
    assert all(p["latest"]["source"] == "library" and p["versions"] == [1] for p in listed.values())
    r = api.client.get("/v1/pipelines/restyle-upscale", headers=api.reader)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order"] == ["restyle", "upscale"] and [s["id"] for s in body["steps"]] == ["restyle", "upscale"]
    template = api.client.get("/v1/templates/restyle-ipadapter/versions/1", headers=api.reader).json()
    assert body["templates"]["restyle"] == {"template": "restyle-ipadapter", "version": 1,
                                            "content_hash": template["content_hash"]}
    # a second start on the same database finds every version recorded with the same content
    ctx = api.client.app.state.ctx
    with ctx.db.session() as s:
        shipped = pipeline_library.scan_pipelines(PROJECT_ROOT / "comfy_pipelines")
        pipeline_app.sync_pipelines(s, shipped)
        changed = next(p for p in copy.deepcopy(shipped) if p.name == "restyle-upscale")
        changed.steps[0].params["seed"] = 43
        with pytest.raises(Conflict, match="changed after it was recorded"):
            pipeline_app.sync_pipelines(s, [changed])


def test_publish_list_show_and_immutability(api: Api) -> None:
    url = "/v1/pipelines/my-chain/versions"
    assert api.client.post(url, headers=api.run, json=CHAIN).status_code == 403
    r = api.client.post(url, headers=api.admin, json=CHAIN)
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["version"], first["source"], first["order"]) == (1, "published", ["restyle", "upscale"])
    assert first["content_hash"] == pl.content_hash(pl.parse({**CHAIN, "name": "x", "version": 9}))

    again = api.client.post(url, headers=api.admin, json=CHAIN)  # no version: would be v2 with v1's content
    assert again.status_code == 409 and "my-chain@v1 has exactly this content" in again.json()["detail"]
    same = api.client.post(url, headers=api.admin, json={**CHAIN, "version": 1})  # a retried publish of v1
    assert same.status_code == 200 and same.json()["content_hash"] == first["content_hash"]
    other = copy.deepcopy(CHAIN)
    other["steps"][1]["params"]["resize"] = 0.5
    r = api.client.post(url, headers=api.admin, json={**other, "version": 1})
    assert r.status_code == 409 and "my-chain@v1 exists with other content" in r.json()["detail"], r.text
    r = api.client.post(url, headers=api.admin, json=other)
    assert r.status_code == 201 and r.json()["version"] == 2

    shown = api.client.get("/v1/pipelines/my-chain", headers=api.reader).json()
    assert shown["version"] == 2 and shown["steps"][1]["params"]["resize"] == 0.5
    v1 = api.client.get("/v1/pipelines/my-chain/versions/1", headers=api.reader).json()
    assert v1["content_hash"] == first["content_hash"] and "resize" not in v1["steps"][1]["params"]
    listed = {p["name"]: p for p in api.client.get("/v1/pipelines", headers=api.reader).json()}
    assert listed["my-chain"]["versions"] == [1, 2]
    r = api.client.get("/v1/pipelines/my-chain/versions/3", headers=api.reader)
    assert r.status_code == 404 and "versions: v1, v2" in r.json()["detail"]
    r = api.client.get("/v1/pipelines/my-chian", headers=api.reader)
    assert r.status_code == 404 and "did you mean 'my-chain'" in r.json()["detail"]
    events = api.client.get("/v1/audit", params={"action": "pipeline.publish"}, headers=api.admin).json()
    assert sorted(e["target"] for e in events) == ["my-chain@v1", "my-chain@v2"]


def refused(api: Api, definition: dict[str, Any]) -> dict[str, str]:
    r = api.client.post("/v1/pipelines/bad/versions", headers=api.admin, json=definition)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return {e["param"]: e["message"] for e in r.json()["errors"]}


def test_refusals_name_each_problem(api: Api) -> None:
    cycle = copy.deepcopy(CHAIN)
    cycle["inputs"] = []
    cycle["steps"][0]["params"]["image"] = {"step": "upscale", "output": "upscaled"}
    assert refused(api, cycle) == {"steps[1].params.image": "cycle: restyle -> upscale -> restyle"}

    mismatch = copy.deepcopy(CHAIN)
    mismatch["inputs"][0]["type"] = "video"
    assert refused(api, mismatch) == {"steps[0].params.image": "type mismatch: input 'frame' is video, "
                                                               "restyle-ipadapter@v1 parameter 'image' is image"}

    dangling = copy.deepcopy(CHAIN)
    dangling["steps"][1]["params"]["image"] = {"step": "restyle", "output": "picture"}
    assert refused(api, dangling) == {"steps[1].params.image": "step 'restyle' (restyle-ipadapter@v1) has no "
                                                               "output 'picture' (outputs: image)"}

    unbound = copy.deepcopy(CHAIN)
    del unbound["steps"][1]["params"]["image"]
    assert set(refused(api, unbound)) == {"steps[1].params.image"}

    assert "steps" in refused(api, {})  # nothing at all: the structure's own problems
    r = api.client.post("/v1/pipelines/bad/versions", headers=api.admin, json={**CHAIN, "name": "good"})
    assert r.status_code == 422 and r.json()["errors"] == [{"param": "name", "message": "must be 'bad' (or left out)"}]
    assert api.client.get("/v1/pipelines/bad", headers=api.reader).status_code == 404  # nothing was stored
