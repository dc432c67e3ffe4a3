"""The whole path through the API against a real ComfyUI server on the CPU."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from PIL import Image, ImageChops, ImageStat

from tests.conftest import FIXTURE_MODEL, models_in, png_bytes
from tests.integration.conftest import Api


def upload(api: Api, data: bytes, name: str = "frame.png") -> dict[str, Any]:
    r = api.client.post("/v1/artifacts", headers=api.run, files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def submit(api: Api, params: dict[str, Any], template: str = "upscale-esrgan", **extra: Any):  # noqa: ANN201
    return api.client.post("/v1/jobs", headers=api.run, json={"template": template, "params": params, **extra})


def wait(api: Api, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.client.get(f"/v1/jobs/{job_id}", headers=api.reader).json()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")


def test_upscale_end_to_end_with_lineage(api: Api) -> None:
    frame = upload(api, png_bytes(128, 96))
    assert frame["content_type"] == "image/png" and (frame["width"], frame["height"]) == (128, 96)
    r = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL})
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "QUEUED"
    job = wait(api, r.json()["id"])
    assert job["state"] == "SUCCEEDED", job["error"]
    assert len(job["attempts"]) == 1 and job["attempts"][0]["state"] == "SUCCEEDED"
    (out,) = job["outputs"]
    content = api.client.get(f"/v1/artifacts/{out['id']}/content", headers=api.reader)
    assert content.status_code == 200
    with Image.open(io.BytesIO(content.content)) as im:
        assert im.size == (4 * 128, 4 * 96)
        # the fixture model enlarges its input (scripts/fixtures.py): the output, shrunk back, is the frame
        back = im.convert("RGB").resize((128, 96), Image.Resampling.BOX)
    with Image.open(io.BytesIO(png_bytes(128, 96))) as src:
        diff = ImageChops.difference(back, src.convert("RGB"))
        assert max(ImageStat.Stat(diff).mean) < 12, ImageStat.Stat(diff).mean
    template = api.client.get("/v1/templates/upscale-esrgan", headers=api.reader).json()
    lineage = api.client.get(f"/v1/artifacts/{out['id']}", headers=api.reader).json()
    assert lineage["job_id"] == job["id"]
    assert lineage["attempt_id"] == job["attempts"][0]["id"]
    assert (lineage["template"], lineage["template_version"]) == ("upscale-esrgan", 2)  # the newest
    assert lineage["template_hash"] == template["content_hash"]
    assert lineage["params"] == {"image": frame["id"], "model": FIXTURE_MODEL, "resize": 1.0,
                                 "resize_method": "lanczos"}
    assert lineage["input_artifacts"] == [frame["id"]]
    assert lineage["server"] == api.client.app.state.ctx.pool.servers[0].url
    assert lineage["comfy_version"] == "0.3.75"
    assert (lineage["width"], lineage["height"], lineage["output_name"]) == (512, 384, "upscaled")
    assert len(lineage["sha256"]) == 64 and lineage["size"] == len(content.content)


def test_same_input_twice_is_stored_once(api: Api) -> None:
    data = png_bytes(32, 32, (1, 2, 3))
    assert upload(api, data)["id"] == upload(api, data, "other-name.png")["id"]


def test_comfy_validation_error_fails_naming_node_and_input(api: Api) -> None:
    frame = upload(api, png_bytes())
    r = submit(api, {"image": frame["id"], "scale": 100.0}, template="scale-by")
    assert r.status_code == 201, r.text
    job = wait(api, r.json()["id"])
    assert job["state"] == "FAILED"
    message = job["error"]["message"]
    assert "'Scale'" in message and "ImageScaleBy" in message and "'scale_by'" in message, message
    assert "bigger than max" in message
    assert job["error"]["node_errors"]["2"]["errors"][0]["extra_info"]["input_name"] == "scale_by"
    assert job["outputs"] == []


def test_missing_model_is_refused_before_dispatch(api: Api) -> None:
    frame = upload(api, png_bytes())
    r = submit(api, {"image": frame["id"], "model": "no-such-model.pth"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert f"upscale_models/no-such-model.pth (it has: {models_in('upscale_models')})" in r.json()["detail"]
    assert api.client.get("/v1/jobs", headers=api.reader).json() == []  # nothing half-written


def test_bad_input_gets_clear_4xx_and_writes_nothing(api: Api) -> None:
    frame = upload(api, png_bytes())
    not_image = upload(api, b"this is not an image", "named-like-one.png")
    assert not_image["content_type"] == "application/octet-stream"
    cases = [
        ({"template": "nope", "params": {}}, 404, "unknown template 'nope'"),
        ({"template": "upscale-esrgan", "version": 7, "params": {"image": frame["id"]}}, 404, "no version 7"),
        ({"template": "upscale-esrgan", "params": {"image": frame["id"], "resize": 4.0}}, 422, "resize: Input should"),
        ({"template": "upscale-esrgan", "params": {}}, 422, "image: Field required"),
        ({"template": "upscale-esrgan", "params": {"image": 5}}, 422, "image: Input should be a valid string"),
        ({"template": "upscale-esrgan", "params": {"image": frame["id"], "bogus": 1}}, 422, "bogus"),
        ({"template": "scale-by", "params": {"image": frame["id"], "scale": 0}}, 422, "scale: Input should be"),
        ({"template": "upscale-esrgan", "params": {"image": "missing-id"}}, 422, "unknown input artifact"),
        ({"template": "upscale-esrgan", "params": {"image": not_image["id"]}}, 422, "not an image"),
    ]
    for body, status, text in cases:
        r = api.client.post("/v1/jobs", headers=api.run, json=body)
        assert r.status_code == status, (body, r.text)
        assert text in r.json()["detail"], (body, r.json())
    assert api.client.get("/v1/jobs", headers=api.reader).json() == []


def test_cancel_queued_job(api_paused: Api) -> None:
    api = api_paused
    frame = upload(api, png_bytes())
    job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.run)
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
    again = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.run)
    assert again.status_code == 409 and "already CANCELLED" in again.json()["detail"]
    listed = api.client.get("/v1/jobs", params={"state": "CANCELLED"}, headers=api.reader).json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_sse_stream_shows_progress_and_final_state(api: Api) -> None:
    frame = upload(api, png_bytes(96, 64))
    job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
    events = []
    with api.client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=api.reader) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    kinds = [e["kind"] for e in events]
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states == ["QUEUED", "RUNNING", "SUCCEEDED"], events
    assert "progress" in kinds
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress[-1]["data"]["title"] == "Upscale"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


def test_auth_401_without_key_403_without_role(api: Api) -> None:
    assert api.client.get("/v1/jobs").status_code == 401
    r = api.client.get("/v1/templates", headers={"X-API-Key": "mlk_wrong"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    r = api.client.post("/v1/artifacts", headers=api.reader, files={"file": ("a.png", png_bytes())})
    assert r.status_code == 403 and "needs one of run" in r.json()["detail"]
    r = api.client.post("/v1/jobs", headers=api.reader, json={"template": "upscale-esrgan", "params": {}})
    assert r.status_code == 403
    bearer = {"Authorization": "Bearer " + api.admin["X-API-Key"]}
    assert api.client.post("/v1/artifacts", headers=bearer, files={"file": ("a.png", png_bytes())}).status_code == 201


def test_template_schema_for_forms(api: Api) -> None:
    listed = api.client.get("/v1/templates", headers=api.reader).json()
    assert {t["name"] for t in listed} == {"upscale-esrgan", "upscale-esrgan-video", "video-retime",
                                           "interpolate-rife", "restyle-ipadapter", "restyle-ipadapter-sdxl",
                                           "scale-by", "blend-faceid", "generate-lora", "restore", "restore-video",
                                           "detail-pass", "detail-pass-video", "restore-face",
                                           "restore-face-video"}
    r = api.client.get("/v1/templates/upscale-esrgan/versions/1", headers=api.reader).json()
    schema = r["params_schema"]
    assert schema["required"] == ["image"]
    assert schema["properties"]["image"]["x-medialab-artifact"] == "image"
    assert schema["properties"]["model"]["x-medialab-folder"] == "upscale_models"
    assert api.client.get("/v1/templates/upscale-esrgan/versions/9", headers=api.reader).status_code == 404
