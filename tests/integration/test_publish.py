"""The artist loop through the API: publish a graph built with parameter nodes, run it, version it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx

from orchestrator.core import editor
from orchestrator.settings import Settings
from tests.conftest import png_bytes
from tests.integration.conftest import make_api
from tests.integration.test_cli import medialab
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
        empty = api.client.post("/v1/templates/scaler/versions", headers=api.admin,
                                json={"graph": {"nodes": [], "links": []}})
        assert empty.status_code == 422 and "editor-format workflow has no nodes" in empty.json()["detail"]

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


EDITOR = Path(__file__).resolve().parents[1] / "data" / "editor"


def test_publish_an_editor_format_workflow_and_open_it_again(comfy_url: str, settings: Settings) -> None:
    """The artist loop with the file ComfyUI's Save writes: publish it, run it, open the version, edit, publish."""
    settings.comfy_servers = [comfy_url]
    workflow = json.loads((EDITOR / "scaler.json").read_text())
    live = httpx.get(f"{comfy_url}/object_info", timeout=60).json()
    with make_api(settings, dispatch=True) as api:
        r = api.client.post("/v1/templates/scaled/versions", headers=api.admin, json={"graph": workflow})
        assert r.status_code == 201, r.text
        v1 = r.json()
        assert v1["graph"] == json.loads((EDITOR / "scaler.api.json").read_text())  # what Export (API) gives
        assert set(v1["params_schema"]["properties"]) == {"image", "scale", "method"}
        assert v1["manifest"]["parameters"][1]["bind"] == {"node": "param scale", "input": "value"}
        frame = upload(api, png_bytes(40, 30))
        job = wait(api, submit(api, {"image": frame["id"], "scale": 1.5}, template="scaled").json()["id"])
        assert job["state"] == "SUCCEEDED", job["error"]
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (60, 45)

        opened = api.client.get("/v1/templates/scaled/versions/1/workflow", headers=api.reader)
        assert opened.status_code == 200, opened.text
        reopened = opened.json()
        assert editor.is_editor_format(reopened) and reopened["extra"]["medialab"]["version"] == 1
        assert editor.to_api(reopened, live) == v1["graph"]
        again = api.client.post("/v1/templates/scaled/versions", headers=api.admin, json={"graph": reopened})
        assert again.status_code == 409 and "exactly this content" in again.json()["detail"]
        scale = next(n for n in reopened["nodes"] if n.get("title") == "param scale")
        scale["widgets_values"][1] = 3.0  # the artist changes the default in the editor and saves
        for node in reopened["nodes"]:
            node["id"] += 10  # ... in a graph whose nodes were renumbered
        reopened["links"] = [[lk[0], lk[1] + 10, lk[2], lk[3] + 10, *lk[4:]] for lk in reopened["links"]]
        v2 = api.client.post("/v1/templates/scaled/versions", headers=api.admin, json={"graph": reopened}).json()
        assert v2["version"] == 2 and "12" in v2["graph"]
        assert v2["params_schema"]["properties"]["scale"]["default"] == 3.0
        diff = api.client.get("/v1/templates/scaled/diff", params={"a": 1, "b": 2}, headers=api.reader).json()
        assert diff["parameters"]["changed"] == ["scale"] and diff["nodes"]["changed"] == ["param scale"]
        assert api.client.get("/v1/templates/scaled/versions/9/workflow", headers=api.reader).status_code == 404

        unknown = copy.deepcopy(workflow)
        unknown["nodes"][3]["type"] = "NoSuchNode"
        r = api.client.post("/v1/templates/scaled/versions", headers=api.admin, json={"graph": unknown})
        assert r.status_code == 422 and "node #4 (NoSuchNode)" in r.json()["detail"]
        subgraph = json.loads((EDITOR / "subgraph.json").read_text())
        r = api.client.post("/v1/templates/scaled/versions", headers=api.admin, json={"graph": subgraph})
        assert r.status_code == 422 and "Unpack Subgraph" in r.json()["detail"]


def test_cli_publishes_the_saved_file_and_opens_it(tmp_path: Path, comfy_url: str) -> None:
    home = tmp_path / ".medialab"
    servers = f'["{comfy_url}"]'
    r = medialab(home, "templates", "publish", "scaled", str(EDITOR / "scaler.json"), "--title", "Scale",
                 "--dry-run", servers=servers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dry run: nothing stored; a publish would store scaled@v1" in r.stdout and "param scale.value" in r.stdout
    r = medialab(home, "templates", "publish", "scaled", str(EDITOR / "scaler.json"), "--title", "Scale",
                 servers=servers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "published scaled@v1" in r.stdout
    out = tmp_path / "scaled.json"
    r = medialab(home, "templates", "open", "scaled", "--out", str(out), "--server", comfy_url, servers=servers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"open {comfy_url}" in r.stdout and "Workflow > Open" in r.stdout
    live = httpx.get(f"{comfy_url}/object_info", timeout=60).json()
    assert editor.to_api(json.loads(out.read_text()), live) == json.loads((EDITOR / "scaler.api.json").read_text())
    r = medialab(home, "templates", "open", "scaled", "--version", "1", servers=servers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "scaled-v1.workflow.json").read_text())["nodes"]
    r = medialab(home, "templates", "open", "scaled", "--version", "7", servers=servers)
    assert r.returncode == 1 and "has no version 7" in r.stderr


def test_a_version_opened_and_saved_keeps_its_manifest(comfy_url: str, settings: Settings) -> None:
    """A template written by hand (manifest, no parameter nodes) goes through the editor and back: the saved
    file keeps the parameters of the version it was opened from, with the defaults the artist left."""
    from orchestrator.core import templates as tpl
    from orchestrator.runtime import library
    from orchestrator.settings import PROJECT_ROOT
    from tests.conftest import FIXTURE_MODEL

    t = tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "upscale-esrgan", 2)
    manifest = t.manifest.model_dump(mode="json", exclude_defaults=True)
    for p in manifest["parameters"]:
        if p["name"] == "model":
            p["default"] = FIXTURE_MODEL
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        r = api.client.post("/v1/templates/upres/versions", headers=api.admin,
                            json={"graph": t.graph, "manifest": manifest})
        assert r.status_code == 201, r.text
        workflow = api.client.get("/v1/templates/upres/versions/1/workflow", headers=api.reader).json()
        resize = next(n for n in workflow["nodes"] if n.get("title") == "Resize")
        resize["widgets_values"][1] = 0.5  # the artist halves the default resize and saves
        r = api.client.post("/v1/templates/upres/versions", headers=api.admin, json={"graph": workflow})
        assert r.status_code == 201, r.text
        v2 = r.json()
        assert set(v2["params_schema"]["properties"]) == set(r0 := t.params_schema()["properties"]) and r0
        assert v2["params_schema"]["properties"]["resize"]["default"] == 0.5
        frame = upload(api, png_bytes(40, 30))
        job = wait(api, submit(api, {"image": frame["id"]}, template="upres").json()["id"])
        assert job["state"] == "SUCCEEDED" and job["version"] == 2, job["error"]
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (80, 60)


def test_preview_reviews_a_publish_and_names_the_nodes_of_its_problems(comfy_url: str, settings: Settings) -> None:
    """The editor's review: a version opened, a widget changed and an input made a parameter node; the preview
    says the version it would be, the merged manifest and the diff, and stores nothing. A problem names its node."""
    from orchestrator.core import templates as tpl
    from orchestrator.runtime import library
    from orchestrator.settings import PROJECT_ROOT
    from tests.conftest import FIXTURE_MODEL

    t = tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "upscale-esrgan", 2)
    manifest = t.manifest.model_dump(mode="json", exclude_defaults=True)
    next(p for p in manifest["parameters"] if p["name"] == "model")["default"] = FIXTURE_MODEL
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        assert api.client.post("/v1/templates/reviewed/versions", headers=api.admin,
                               json={"graph": t.graph, "manifest": manifest}).status_code == 201
        workflow = api.client.get("/v1/templates/reviewed/versions/1/workflow", headers=api.reader).json()
        resize = next(n for n in workflow["nodes"] if n.get("title") == "Resize")
        resize["widgets_values"][0] = "bicubic"  # a widget changed: the default of resize_method
        # Resize's scale_by made a parameter node, as the editor's "make a parameter" does
        slot = next(i for i, inp in enumerate(resize["inputs"]) if inp["name"] == "scale_by")
        node_id, link_id = max(n["id"] for n in workflow["nodes"]) + 1, workflow["last_link_id"] + 1
        workflow["nodes"].append({"id": node_id, "type": "MediaLabParamFloat", "pos": [0, 400], "size": [300, 150],
                                  "flags": {}, "order": 0, "mode": 0, "title": "param zoom", "properties": {},
                                  "inputs": [], "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [link_id]}],
                                  "widgets_values": ["zoom", 0.5, "How much to resize.", 0.1, 2.0]})
        resize["inputs"][slot]["link"] = link_id
        workflow["links"].append([link_id, node_id, 0, resize["id"], slot, "FLOAT"])
        workflow["last_link_id"], workflow["last_node_id"] = link_id, node_id
        r = api.client.post("/v1/templates/reviewed/preview", headers=api.admin, json={"graph": workflow})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert (seen["version"], seen["base_version"]) == (2, 1)
        names = [p["name"] for p in seen["manifest"]["parameters"]]
        assert names == ["image", "model", "resize_method", "zoom"], names  # resize: its input is a link now
        assert seen["parameters"] == {"added": ["zoom"], "removed": ["resize"], "changed": ["resize_method"],
                                      "details": {"resize_method": {"default": {"from": "lanczos", "to": "bicubic"}}}}
        assert seen["nodes"]["details"]["Resize"] == {"scale_by": {"from": 1.0, "to": "<- param zoom"},
                                                      "upscale_method": {"from": "lanczos", "to": "bicubic"}}
        assert seen["nodes"]["added"] == ["param zoom"] and "Resize" in seen["nodes"]["changed"]
        assert seen["params_schema"]["properties"]["zoom"]["default"] == 0.5
        assert api.client.get("/v1/templates/reviewed", headers=api.reader).json()["version"] == 1  # nothing stored
        assert (seen["kind"], seen["fields"]) == ("image", {})  # the version's own kind and title
        other = api.client.post("/v1/templates/reviewed/preview", headers=api.admin,
                                json={"graph": workflow, "kind": "other", "title": "Reviewed"}).json()
        assert other["fields"] == {"kind": {"from": "image", "to": "other"},
                                   "title": {"from": "ESRGAN upscale", "to": "Reviewed"}}
        assert api.client.post("/v1/templates/reviewed/preview", headers=api.run,
                               json={"graph": workflow}).status_code == 403

        r = api.client.post("/v1/templates/reviewed/versions", headers=api.admin, json={"graph": workflow})
        assert r.status_code == 201 and r.json()["version"] == 2, r.text
        frame = upload(api, png_bytes(40, 30))
        job = wait(api, submit(api, {"image": frame["id"], "zoom": 0.25}, template="reviewed").json()["id"])
        assert job["state"] == "SUCCEEDED" and job["version"] == 2, job["error"]
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (40, 30)  # 4x, then a quarter

        loader = next(n for n in workflow["nodes"] if n.get("title") == "Upscale model")
        loader["widgets_values"][0] = "nowhere.pth"  # a model no server has: shown on its loader
        r = api.client.post("/v1/templates/reviewed/preview", headers=api.admin, json={"graph": workflow})
        assert r.status_code == 422 and "lacks upscale_models/nowhere.pth" in r.json()["detail"], r.text
        assert r.json()["nodes"] == [{"node": str(loader["id"]), "input": "model_name", "message": (
            f"node 'Upscale model' (#{loader['id']} UpscaleModelLoader) input 'model_name': no server of the pool "
            "has upscale_models/nowhere.pth")}]
        loader["widgets_values"][0] = FIXTURE_MODEL

        upscale = next(n for n in workflow["nodes"] if n.get("title") == "Upscale")
        image_in = next(inp for inp in upscale["inputs"] if inp["name"] == "image")
        workflow["links"] = [lk for lk in workflow["links"] if lk[0] != image_in["link"]]
        image_in["link"] = None  # the artist deleted a link
        for path in ("preview", "versions"):
            r = api.client.post(f"/v1/templates/reviewed/{path}", headers=api.admin, json={"graph": workflow})
            assert r.status_code == 422, r.text
            assert r.json()["nodes"] == [{"node": str(upscale["id"]), "input": "image", "message": (
                f"node 'Upscale' (#{upscale['id']} ImageUpscaleWithModel): required input 'image' is missing")}]
        assert api.client.get("/v1/templates/reviewed", headers=api.reader).json()["version"] == 2
