"""The artist loop through the API: publish a graph built with parameter nodes, run it, version it."""

from __future__ import annotations

import copy

from orchestrator.settings import Settings
from tests.conftest import png_bytes
from tests.integration.conftest import make_api
from tests.integration.test_jobs_api import submit, upload, wait
from tests.unit.test_publish import GRAPH


def test_publish_run_version_deprecate_diff(comfy_url: str, settings: Settings) -> None:
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        publish = {"graph": GRAPH, "title": "Scale by", "kind": "image"}
        assert api.client.post("/v1/templates/scaler/versions", headers=api.run, json=publish).status_code == 403
        r = api.client.post("/v1/templates/scaler/versions", headers=api.admin, json=publish)
        assert r.status_code == 201, r.text
        v1 = r.json()
        assert (v1["version"], v1["source"]) == (1, "published")
        assert set(v1["params_schema"]["properties"]) == {"image", "scale", "method"}
        again = api.client.post("/v1/templates/scaler/versions", headers=api.admin, json=publish)
        assert again.status_code == 409 and "exactly this content" in again.json()["detail"]

        frame = upload(api, png_bytes(40, 30))
        job = wait(api, submit(api, {"image": frame["id"], "scale": 1.5}, template="scaler").json()["id"])
        assert job["state"] == "SUCCEEDED", job["error"]
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (60, 45)

        bad = copy.deepcopy(GRAPH)
        bad["4"]["inputs"]["scale_by"] = 99.0
        bad["4"]["class_type"] = "ImageScaleBy"
        del bad["2"]
        r = api.client.post("/v1/templates/scaler/versions", headers=api.admin, json={"graph": bad})
        assert r.status_code == 422 and "input 'scale_by': 99.0 is above the maximum 8.0" in r.json()["detail"]
        editor = api.client.post("/v1/templates/scaler/versions", headers=api.admin,
                                 json={"graph": {"nodes": [], "links": []}})
        assert editor.status_code == 422 and "Export (API)" in editor.json()["detail"]

        v2_graph = copy.deepcopy(GRAPH)
        v2_graph["2"]["inputs"]["value"] = 3.0
        v2 = api.client.post("/v1/templates/scaler/versions", headers=api.admin, json={"graph": v2_graph}).json()
        assert v2["version"] == 2
        diff = api.client.get("/v1/templates/scaler/diff", params={"a": 1, "b": 2}, headers=api.reader).json()
        assert diff["parameters"]["changed"] == ["scale"] and diff["nodes"]["changed"] == ["param scale"]
        assert submit(api, {"image": frame["id"]}, template="scaler").json()["version"] == 2
        r = api.client.post("/v1/templates/scaler/versions/2/deprecate", headers=api.admin)
        assert r.json()["deprecated"] is True
        assert submit(api, {"image": frame["id"]}, template="scaler").json()["version"] == 1
        pinned = submit(api, {"image": frame["id"]}, template="scaler", version=2).json()
        assert pinned["version"] == 2  # a deprecated version still runs when named
        listed = {t["name"]: t for t in api.client.get("/v1/templates", headers=api.reader).json()}
        assert listed["scaler"]["latest"]["version"] == 1 and listed["scaler"]["versions"] == [1, 2]
