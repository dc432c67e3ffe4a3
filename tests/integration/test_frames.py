"""Frames from a stored video through the real API (PyAV decoding a real H.264 clip), on SQLite and PostgreSQL:
every Nth frame, time codes, scene cuts and the sharpest frame of each scene of a clip with known scenes; the
same frames stored once; the refusals; a clip straight into a batch of jobs on a real ComfyUI; the CLI against
a served API."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFilter
from sqlmodel import func, select

from orchestrator.db.tables import Artifact
from orchestrator.settings import Settings
from tests.conftest import png_bytes
from tests.integration.conftest import Api, make_api
from tests.integration.test_batches_api import wait

FPS, TOTAL, CUTS = 24, 60, (0, 20, 45)  # three scenes: frames 0-19, 20-44, 45-59
SHARP = (7, 33, 52)  # one sharp frame in each scene; every other frame is blurred
W, H = 320, 180


def scene_frame(index: int) -> Image.Image:
    """Scene k: its own grey level and noise texture (one per scene); blurred except on the scene's sharp frame."""
    import numpy as np

    scene = sum(index >= c for c in CUTS) - 1
    rng = np.random.default_rng(scene)
    base = (30, 220, 120)[scene]  # grey levels far apart: each cut differs by well over the 0.15 threshold
    texture = rng.integers(-40, 41, size=(H, W, 1)) + np.array([[[base, base + 10, base - 10]]])
    img = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8), "RGB")
    return img if index in SHARP else img.filter(ImageFilter.GaussianBlur(3))


def clip_bytes() -> bytes:
    """60 frames at 24 fps, H.264 at a high quality (the sharp frames stay sharp)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("h264", rate=FPS, options={"crf": "4"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(TOTAL):
            out.mux(stream.encode(av.VideoFrame.from_image(scene_frame(i))))
        out.mux(stream.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def clip() -> bytes:
    return clip_bytes()


@pytest.fixture(params=["sqlite", "postgresql"])
def framing(request: pytest.FixtureRequest, settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API (no dispatcher) on each kind of database."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=False) as api:
        yield api


def upload(api: Api, data: bytes, name: str = "clip.mp4") -> str:
    r = api.client.post("/v1/artifacts", headers=api.run, files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def extract(api: Api, video: str, **body: Any) -> dict[str, Any]:
    r = api.client.post(f"/v1/artifacts/{video}/frames", headers=api.run, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def rows(api: Api) -> int:
    with api.client.app.state.ctx.db.session() as s:
        return s.exec(select(func.count()).select_from(Artifact)).one()


def test_every_nth_time_codes_scenes_and_sharpest(framing: Api, clip: bytes) -> None:
    api = framing
    video = upload(api, clip)
    every = extract(api, video, every_n=10, tags=["shot:a"])
    assert [f["frame_index"] for f in every["frames"]] == [0, 10, 20, 30, 40, 50]
    assert every["counts"] == {"created": 6, "existing": 0} and every["video"] == video
    first = every["frames"][1]
    assert first["time_s"] == pytest.approx(10 / FPS) and first["role"] == "input"
    assert first["input_artifacts"] == [video] and (first["width"], first["height"]) == (W, H)
    assert first["content_type"] == "image/png" and {"shot:a", f"frame-of:{video}"} <= set(first["tags"])

    at = extract(api, video, at=[1.0, 0.5])
    assert [(f["frame_index"], f["time_s"]) for f in at["frames"]] == [(12, pytest.approx(0.5)),
                                                                       (24, pytest.approx(1.0))]
    scenes = extract(api, video, scenes=True)
    assert [f["frame_index"] for f in scenes["frames"]] == list(CUTS)
    assert [f["time_s"] for f in scenes["frames"]] == [pytest.approx(c / FPS) for c in CUTS]
    assert scenes["counts"] == {"created": 1, "existing": 2}  # frames 0 and 20 came with every_n=10
    sharpest = extract(api, video, sharpest=True)
    assert [f["frame_index"] for f in sharpest["frames"]] == list(SHARP)
    assert {f["input_artifacts"][0] for f in sharpest["frames"]} == {video}

    before = rows(api)
    again = extract(api, video, sharpest=True)
    assert again["counts"] == {"created": 0, "existing": 3} and rows(api) == before  # stored once, never twice
    assert [f["id"] for f in again["frames"]] == [f["id"] for f in sharpest["frames"]]
    listed = api.client.get("/v1/artifacts", headers=api.run, params={"tag": f"frame-of:{video}",
                                                                     "limit": 100}).json()
    assert len(listed) == len({*map(str, [0, 10, 20, 30, 40, 50, 12, 24, 45, *SHARP])})
    png = api.client.get(f"/v1/artifacts/{sharpest['frames'][0]['id']}/content", headers=api.admin)
    assert Image.open(io.BytesIO(png.content)).size == (W, H)


def test_refusals(framing: Api, clip: bytes) -> None:
    api = framing
    video = upload(api, clip)
    image = upload(api, png_bytes(), "still.png")
    before = rows(api)
    for target, body, status, words in [
        (image, {"every_n": 2}, 422, "not a video"),
        ("0" * 32, {"every_n": 2}, 404, "artifact"),
        (video, {"every_n": 0}, 422, "every_n"),
        (video, {"every_n": 2, "scenes": True}, 422, "exactly one"),
        (video, {}, 422, "exactly one"),
        (video, {"at": [0.5, 9.0]}, 422, "9 s is past the end"),
        (video, {"at": [-1]}, 422, "at:"),
        (video, {"scenes": True, "scene_threshold": 2}, 422, "scene_threshold"),
        (video, {"every_n": 2, "extra": 1}, 422, "extra"),
    ]:
        r = api.client.post(f"/v1/artifacts/{target}/frames", headers=api.run, json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, (body, r.text)
    assert api.client.post(f"/v1/artifacts/{video}/frames", headers=api.reader,
                           json={"every_n": 2}).status_code == 403  # the run role, as for an upload
    api.client.app.state.ctx.settings.max_frames_per_extract = 5
    r = api.client.post(f"/v1/artifacts/{video}/frames", headers=api.run, json={"every_n": 10})
    assert r.status_code == 422 and "max_frames_per_extract=5" in r.text and "6 frames" in r.text, r.text
    assert rows(api) == before  # nothing stored by any refusal


def test_a_clip_into_a_batch_of_jobs(api: Api, clip: bytes) -> None:
    video = upload(api, clip)
    body = {"template": "scale-by", "frames": {"video": video, "scenes": True}, "input_param": "image",
            "params": {"scale": 0.25}}
    before = rows(api)
    dry = api.client.post("/v1/batches", headers=api.run, json=body | {"dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] and dry.json()["total"] == 3 and rows(api) == before  # selected, nothing stored
    r = api.client.post("/v1/batches", headers=api.run, json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["total"] == 3 and created["request"]["frames"]["video"] == video
    assert created["request"]["frames"]["scenes"] and created["request"]["inputs"] == 3
    batch = wait(api, created["id"])
    assert batch["counts"] == {"SUCCEEDED": 3}, batch
    frames = api.client.get("/v1/artifacts", headers=api.run, params={"tag": f"frame-of:{video}"}).json()
    by_id = {f["id"]: f for f in frames}
    assert sorted(f["frame_index"] for f in frames) == list(CUTS)
    outputs = batch["outputs"]
    assert len(outputs) == 3
    for out in outputs:  # each output's lineage: its frame, whose lineage is the video
        (frame,) = out["input_artifacts"]
        assert by_id[frame]["input_artifacts"] == [video]
        assert (out["width"], out["height"]) == (W // 4, H // 4)
    jobs = api.client.get(f"/v1/batches/{created['id']}/jobs", headers=api.run).json()
    assert [by_id[j["params"]["image"]]["frame_index"] for j in jobs] == list(CUTS)  # in time order
    both = api.client.post("/v1/batches", headers=api.run, json=body | {"inputs": [video]})
    assert both.status_code == 422 and "either inputs or frames" in both.text


def test_cli_frames_and_batch_against_a_served_api(tmp_path: Path, comfy_url: str, clip: bytes) -> None:
    from tests.integration.test_cli_remote import medialab, served, service_with_key

    here = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    home, key = service_with_key(tmp_path, "run", "export")
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    (tmp_path / "clip.mp4").write_bytes(clip)
    with served(home, "--no-dispatch", env={**here, "MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        import httpx

        with (tmp_path / "clip.mp4").open("rb") as f:
            video = httpx.post(f"{url}/v1/artifacts", headers={"X-API-Key": key},
                               files={"file": ("clip.mp4", f)}).json()["id"]
        client = {**here, "MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
        out = tmp_path / "frames"
        r = medialab(operator, "frames", video, "--at", "0.5,1.0", "--tag", "cli:yes", "--out", str(out), env=client)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"12\s.*0\.500\s.*[0-9a-f]{32}", r.stdout) and "2 created, 0 existing" in r.stdout, r.stdout
        assert sorted(p.name for p in out.iterdir()) == ["t00000.500_f000012.png", "t00001.000_f000024.png"]
        js = medialab(operator, "frames", video, "--scenes", "--json", env=client)
        assert js.returncode == 0, js.stderr
        answer = json.loads(js.stdout)
        assert [f["frame_index"] for f in answer["frames"]] == list(CUTS) and answer["counts"]["created"] == 3
        bad = medialab(operator, "frames", video, "--every", "2", "--scenes", env=client)
        assert bad.returncode == 1 and "exactly one" in bad.stderr
        dry = medialab(operator, "batch", "run", "upscale-esrgan", "--frames-of", video, "--every", "20",
                       "--set", "model=tiny_x4.safetensors", "--dry-run", env=client)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run: 3 job(s) of 'upscale-esrgan'" in dry.stdout and "nothing was stored" in dry.stdout
        run = medialab(operator, "batch", "run", "upscale-esrgan", "--frames-of", video, "--sharpest",
                       "--set", "model=tiny_x4.safetensors", "--no-watch", env=client)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "3 job(s) over frames of" in run.stdout
        jobs = httpx.get(f"{url}/v1/jobs", headers={"X-API-Key": key}, params={"limit": 50}).json()
        assert len(jobs) == 3 and {j["state"] for j in jobs} == {"QUEUED"}


def test_a_cut_between_shots_of_one_brightness_but_other_colours_is_a_scene(tmp_path: Path) -> None:
    """Red, green and blue shots of about the same grey level: the colour difference finds both cuts."""
    import av

    from orchestrator.core import frames as rules
    from orchestrator.runtime import frames as decode

    path = tmp_path / "colours.mp4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("h264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(30):
            colour = [(200, 80, 80), (80, 150, 80), (90, 90, 250)][i // 10]
            out.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (W, H), colour))))
        out.mux(stream.encode())
    assert rules.scene_cuts(decode.analyse(path, sharpness=False).diffs) == [0, 10, 20]
