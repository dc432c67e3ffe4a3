"""Every template of the library against real node definitions: the /object_info recorded from a server
with ComfyUI-Frame-Interpolation and ComfyUI_IPAdapter_plus, merged with a live server's (core nodes and
this project's pack). End-to-end runs of templates that need those packs happen when
MEDIALAB_TEST_CUSTOM_NODES points at a custom_nodes folder that holds them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.comfy.worker import LocalWorker
from orchestrator.core import byte_path as transport
from orchestrator.core import templates as tpl
from orchestrator.core.validation import validate_graph
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT, Settings
from tests.conftest import MODELS, mp4_bytes, png_bytes
from tests.integration.conftest import make_api
from tests.integration.test_jobs_api import submit, upload

RECORDED = PROJECT_ROOT.parent / "shared" / "comfy" / "object_info-0.3.75.json"
LIBRARY = library.scan_library(PROJECT_ROOT / "comfy_workflows")


@pytest.fixture(scope="module")
def node_defs(comfy_url: str) -> dict[str, Any]:
    if not RECORDED.exists():
        pytest.skip(f"{RECORDED} not found (CI and sessions lay ../shared beside the repository)")
    return {**json.loads(RECORDED.read_text()), **httpx.get(f"{comfy_url}/object_info", timeout=60).json()}


def defaults(t: tpl.TemplateVersion) -> dict[str, Any]:
    return {p.name: p.default if p.default is not None else f"sha256/00/{p.name}" for p in t.manifest.parameters}


@pytest.mark.parametrize("t", LIBRARY, ids=lambda t: t.ref)
def test_template_validates_on_both_byte_paths(t: tpl.TemplateVersion, node_defs: dict[str, Any]) -> None:
    assert validate_graph(tpl.bind(t, defaults(t)), node_defs) == []
    assert validate_graph(transport.direct_graph(t, defaults(t)), node_defs) == []
    assert t.params_schema()["properties"]  # a form can be drawn


def test_template_needing_an_absent_pack_is_refused_naming_the_node(comfy_url: str, settings: Settings) -> None:
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=False) as api:
        clip = upload(api, mp4_bytes(), "clip.mp4")
        r = submit(api, {"video": clip["id"]}, template="interpolate-rife")
        assert r.status_code == 422 and "lacks node RIFE VFI" in r.json()["detail"]
        frame = upload(api, png_bytes())
        r = submit(api, {"image": frame["id"]}, template="restyle-ipadapter")
        detail = r.json()["detail"]
        assert r.status_code == 422 and "node IPAdapterAdvanced" in detail and \
            "checkpoints/v1-5-pruned-emaonly.safetensors" in detail


def pack_dir(name: str) -> Path:
    """The pack's folder under MEDIALAB_TEST_CUSTOM_NODES, or a skip saying why it is not there."""
    root = os.environ.get("MEDIALAB_TEST_CUSTOM_NODES")
    if not root:
        pytest.skip(f"MEDIALAB_TEST_CUSTOM_NODES does not point at a custom_nodes folder with {name} "
                    "(not installable from the registries this machine reaches)")
    if not (Path(root) / name).is_dir():
        pytest.skip(f"MEDIALAB_TEST_CUSTOM_NODES ({root}) has no {name} folder")
    return Path(root) / name


@pytest.fixture(scope="module")
def pack_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    """One real ComfyUI with every pack under MEDIALAB_TEST_CUSTOM_NODES installed."""
    from tests.conftest import start_workers

    pack_dir("ComfyUI_IPAdapter_plus")
    packs = Path(os.environ["MEDIALAB_TEST_CUSTOM_NODES"])
    (worker,) = start_workers(tmp_path_factory, 1, extra_packs=[p for p in packs.iterdir() if p.is_dir()])
    yield worker
    worker.stop()


def test_rife_doubles_the_frame_rate_end_to_end(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    import io

    import av

    from tests.conftest import start_workers
    from tests.integration.test_jobs_api import wait

    packs = pack_dir("ComfyUI-Frame-Interpolation").parent
    (worker,) = start_workers(tmp_path_factory, 1, extra_packs=[p for p in packs.iterdir() if p.is_dir()])
    try:
        settings.comfy_servers = [worker.url]
        with make_api(settings, dispatch=True) as api:
            clip = upload(api, mp4_bytes(frames=30, fps=60), "clip.mp4")
            job = wait(api, submit(api, {"video": clip["id"]}, template="interpolate-rife").json()["id"], 600)
            assert job["state"] == "SUCCEEDED", job["error"]
            (out,) = job["outputs"]
            data = api.client.get(f"/v1/artifacts/{out['id']}/content", headers=api.reader).content
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                assert stream.average_rate == 120 and sum(1 for _ in container.decode(stream)) == 59
            # the node pack reports RIFE's middle frames (custom_nodes/frame_progress.py): frames done and an ETA
            events = api.client.get(f"/v1/jobs/{job['id']}/events?follow=false", headers=api.reader).json()
            steps = [e for e in events if e["kind"] == "progress" and e["data"].get("title") == "Interpolate"]
            assert steps, events
            data = [e["data"] for e in steps]
            assert data[-1]["value"] == data[-1]["max"] == 29, data  # one middle frame a pair of the 30 frames
            assert all(d["frames_total"] == 30 and "eta_s" in d for d in data), data
            assert [d["frames_done"] for d in data] == sorted(d["frames_done"] for d in data)
            assert data[-1]["frames_done"] == 30 and data[-1]["eta_s"] == 0.0
            assert steps[-1]["reason"] == "Interpolate: frame 30/30, ETA 0 s"
    finally:
        worker.stop()


def test_upscale_resize_and_video_upscale_end_to_end(api) -> None:  # noqa: ANN001
    import io

    import av

    from tests.conftest import FIXTURE_MODEL, png_bytes
    from tests.integration.test_jobs_api import wait

    frame = upload(api, png_bytes(64, 48))
    half = wait(api, submit(api, {"image": frame["id"], "model": FIXTURE_MODEL, "resize": 0.5}).json()["id"])
    assert half["state"] == "SUCCEEDED" and (half["outputs"][0]["width"], half["outputs"][0]["height"]) == (128, 96)
    clip = upload(api, mp4_bytes(frames=10, fps=25), "clip.mp4")
    job = wait(api, submit(api, {"video": clip["id"], "model": FIXTURE_MODEL},
                           template="upscale-esrgan-video").json()["id"], timeout=300)
    assert job["state"] == "SUCCEEDED", job["error"]
    data = api.client.get(f"/v1/artifacts/{job['outputs'][0]['id']}/content", headers=api.reader).content
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert len(frames) == 10 and stream.average_rate == 25 and (frames[0].width, frames[0].height) == (256, 192)


def test_generate_with_a_character_lora_end_to_end(api) -> None:  # noqa: ANN001
    """Core nodes only (no reference): the fixture SD1.5 checkpoint and LoRA through the real loaders;
    the LoRA really patches the model (same seed, other strength, other pixels)."""
    import io

    from PIL import Image, ImageChops

    from tests.integration.test_jobs_api import wait

    params = {"lora": "tiny_character.safetensors", "checkpoint": "tiny_sd15.safetensors", "steps": 2,
              "width": 64, "height": 64, "prompt": "photo of mlchar person", "seed": 7}
    pixels = []
    for strength in (0.0, 2.0):
        job = wait(api, submit(api, {**params, "lora_strength": strength}, template="generate-lora").json()["id"],
                   timeout=300)
        assert job["state"] == "SUCCEEDED", job["error"]
        (out,) = job["outputs"]
        assert (out["width"], out["height"]) == (64, 64) and out["content_type"] == "image/png"
        data = api.client.get(f"/v1/artifacts/{out['id']}/content", headers=api.reader).content
        pixels.append(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ImageChops.difference(*pixels).getbbox() is not None
    r = submit(api, {**params, "lora": "no-such-lora.safetensors"}, template="generate-lora")
    detail = r.json()["detail"]
    assert r.status_code == 422 and "loras/no-such-lora.safetensors (it has: " in detail and \
        "tiny_character.safetensors" in detail


@pytest.fixture(scope="module")
def ipadapter_models() -> None:
    """Full SD1.5, CLIP ViT-H and IP-Adapter PLUS fixtures (3.5 GB, about 30 s to build once)."""
    pack_dir("ComfyUI_IPAdapter_plus")
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "fixtures.py"), "--ipadapter", str(MODELS)],
                   check=True)


def test_restyle_and_lora_with_reference_through_ip_adapter(ipadapter_models: None, pack_worker: LocalWorker,
                                                            settings: Settings) -> None:
    from tests.integration.test_jobs_api import wait

    settings.comfy_servers = [pack_worker.url]
    with make_api(settings, dispatch=True) as api:
        frame = upload(api, png_bytes(96, 96))
        common = {"checkpoint": "sd15_full.safetensors", "steps": 2, "width": 64, "height": 64}
        job = wait(api, submit(api, {**common, "image": frame["id"], "outfit": "a red coat"},
                               template="restyle-ipadapter").json()["id"], timeout=600)
        assert job["state"] == "SUCCEEDED", job["error"]
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (64, 64)
        job = wait(api, submit(api, {**common, "lora": "tiny_character.safetensors", "reference": frame["id"]},
                               template="generate-lora").json()["id"], timeout=600)
        assert job["state"] == "SUCCEEDED", job["error"]
        assert job["outputs"][0]["input_artifacts"] == [frame["id"]]  # lineage: the reference is an input


def test_blend_faceid_end_to_end(ipadapter_models: None, pack_worker: LocalWorker, settings: Settings) -> None:
    """Face + two inspirations. The buffalo_l face models are synthetic stand-ins (every image has a face):
    they test the code path, not face analysis."""
    from importlib.util import find_spec

    from tests.integration.test_jobs_api import wait

    lacking = [m for m in ("insightface", "onnxruntime", "onnx") if find_spec(m) is None]
    if lacking:
        pytest.skip(f"FaceID needs {', '.join(lacking)} installed beside ComfyUI (pip install insightface onnxruntime)")
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "fixtures.py"), "--faceid", str(MODELS),
                    str(pack_dir("ComfyUI_IPAdapter_plus"))], check=True)
    settings.comfy_servers = [pack_worker.url]
    with make_api(settings, dispatch=True) as api:
        face, first, second = (upload(api, png_bytes(96, 96, color)) for color in ((200, 150, 120), (20, 40, 200),
                                                                                   (10, 160, 30)))
        params = {"face": face["id"], "inspiration_1": first["id"], "inspiration_2": second["id"],
                  "inspiration_2_weight": 0.3, "checkpoint": "sd15_full.safetensors", "steps": 2, "width": 64,
                  "height": 64}
        job = wait(api, submit(api, params, template="blend-faceid").json()["id"], timeout=900)
        assert job["state"] == "SUCCEEDED", job["error"]
        assert sorted(job["outputs"][0]["input_artifacts"]) == sorted([face["id"], first["id"], second["id"]])
