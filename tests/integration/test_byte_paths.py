"""Both byte paths end to end, with inputs and outputs in a real S3-protocol server, and the node pack
inside a real ComfyUI."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from orchestrator.comfy.client import ComfyClient
from orchestrator.comfy.monitor import ServerMonitor
from orchestrator.comfy.worker import LocalWorker
from orchestrator.settings import Settings
from storage import MinioStore, key_for
from tests.conftest import FIXTURE_MODEL, mp4_bytes, png_bytes, start_workers
from tests.integration.conftest import Api, make_api
from tests.integration.test_jobs_api import submit, upload, wait
from tests.integration.test_pool import _events, attempts_of, running_on, wait_until
from tests.s3 import S3Server

BUCKET = "medialab-test"


@pytest.fixture(scope="module")
def s3mod() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


def s3_env(s3: S3Server) -> dict[str, str]:
    return {"MEDIALAB_S3_ENDPOINT": s3.endpoint, "MEDIALAB_S3_ACCESS_KEY": s3.access_key,
            "MEDIALAB_S3_SECRET_KEY": s3.secret_key, "MEDIALAB_S3_BUCKET": BUCKET}


@pytest.fixture(scope="module")
def direct_worker(s3mod: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    """A server with the node pack and the object store's credentials; a 1 MB upload limit."""
    (worker,) = start_workers(tmp_path_factory, 1, env=s3_env(s3mod), extra_args=["--max-upload-size", "1"])
    yield worker
    worker.stop()


def s3_api(settings: Settings, s3: S3Server, servers: list[str], byte_path: str):  # noqa: ANN201
    for name, value in s3.settings().items():
        setattr(settings, name, value)
    settings.comfy_servers, settings.byte_path = servers, byte_path
    return make_api(settings, dispatch=True)


def byte_path_of(api: Api, job_id: str) -> str:
    return next(e["data"]["byte_path"] for e in _events(api, job_id) if (e["data"] or {}).get("byte_path"))


@pytest.mark.parametrize("path", ["through", "direct"])
def test_upscale_and_video_with_media_in_s3(path: str, direct_worker: LocalWorker, s3mod: S3Server,
                                            settings: Settings) -> None:
    with s3_api(settings, s3mod, [direct_worker.url], path) as api:
        executor = api.client.app.state.ctx.executor
        store: MinioStore = api.client.app.state.ctx.store
        frame = upload(api, png_bytes(64, 48, (9, 99, 9)))
        clip = upload(api, mp4_bytes(), "clip.mp4")
        assert clip["content_type"] == "video/mp4"
        image_job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
        video_job = submit(api, {"video": clip["id"], "fps": 60.0}, template="video-retime").json()
        image_done, video_done = wait(api, image_job["id"]), wait(api, video_job["id"])
        assert image_done["state"] == "SUCCEEDED", image_done["error"]
        assert video_done["state"] == "SUCCEEDED", video_done["error"]
        assert byte_path_of(api, image_job["id"]) == byte_path_of(api, video_job["id"]) == path
        (image,) = image_done["outputs"]
        with store.open(key_for(image["sha256"])) as f, Image.open(io.BytesIO(f.read())) as im:
            assert im.size == (256, 192) and (image["width"], image["height"]) == (256, 192)
        (video,) = video_done["outputs"]
        assert video["content_type"] == "video/mp4" and store.size(key_for(video["sha256"])) == video["size"]
        with store.open(key_for(video["sha256"])) as f, av.open(io.BytesIO(f.read())) as container:
            stream = container.streams.video[0]
            assert sum(1 for _ in container.decode(stream)) == 12 and stream.average_rate == 60
        if path == "direct":
            assert executor.bytes_through == 0  # not one media byte through the orchestrator
        else:
            assert executor.bytes_through >= frame["size"] + clip["size"] + image["size"] + video["size"]


def test_input_over_the_upload_limit_goes_direct(direct_worker: LocalWorker, s3mod: S3Server,
                                                 settings: Settings) -> None:
    noisy = Image.effect_noise((1024, 768), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > 1024 * 1024  # over this server's 1 MB limit
    with s3_api(settings, s3mod, [direct_worker.url], "through") as api:
        big = upload(api, buf.getvalue(), "big.png")
        job = wait(api, submit(api, {"image": big["id"], "model": FIXTURE_MODEL}).json()["id"], timeout=300)
        assert job["state"] == "SUCCEEDED", job["error"]
        assert byte_path_of(api, job["id"]) == "direct"


def test_direct_path_that_cannot_be_fails_clearly(comfy_url: str, s3mod: S3Server, settings: Settings) -> None:
    with s3_api(settings, s3mod, [comfy_url], "direct") as api:  # that server has no storage credentials
        job = wait(api, submit(api, {"image": upload(api, png_bytes())["id"], "model": FIXTURE_MODEL}).json()["id"])
        assert job["state"] == "FAILED"
        assert job["error"]["message"] == ("MEDIALAB_BYTE_PATH=direct, but the direct byte path is not possible: "
                                           "the server has no object storage configured (MEDIALAB_S3_ENDPOINT)")


def run_prompt(client: ComfyClient, monitor: ServerMonitor, graph: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Run ``graph`` as the executor does (subscribed before the submit, on the monitor's client id): the prompt
    id and its events up to its end (``executing`` of no node, sent once /history holds the prompt)."""
    pid = str(uuid.uuid4())
    seen: list[dict[str, Any]] = []
    with monitor.subscribe(pid) as events:
        client.submit(graph, pid, monitor.client_id)
        while (e := events.recv(60)) is not None:
            seen.append(e)
            if e["type"] == "executing" and e["data"].get("node") is None:
                break
    assert seen and seen[-1]["type"] == "executing" and seen[-1]["data"].get("node") is None, seen
    return pid, seen


def test_node_pack_inside_comfyui(direct_worker: LocalWorker, s3mod: S3Server) -> None:
    """A graph of pack nodes only: load by presigned URL, parameter nodes feeding core inputs (also a
    COMBO), save to storage; the ui output names the stored object."""
    store = MinioStore(s3mod.endpoint, s3mod.access_key, s3mod.secret_key, bucket=BUCKET)
    src = store.put_stream([png_bytes(30, 20, (200, 10, 10))])
    graph = {
        "1": {"class_type": "MediaLabLoadImage", "inputs": {"source": store.presigned_get(src.key), "max_mb": 1}},
        "2": {"class_type": "MediaLabParamFloat", "inputs": {"name": "scale", "value": 2.0}},
        "3": {"class_type": "MediaLabParamChoice", "inputs": {"name": "method", "value": "bilinear",
                                                               "choices": "nearest-exact,bilinear"}},
        "4": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": ["3", 0],
                                                        "scale_by": ["2", 0]}},
        "5": {"class_type": "MediaLabSaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "t"}},
    }
    client = ComfyClient(direct_worker.url)
    monitor = ServerMonitor(direct_worker.url, uuid.uuid4().hex).start()
    try:
        assert monitor.connected.wait(30), "no websocket to the server"
        pid, _ = run_prompt(client, monitor, graph)
        (obj,) = client.history(pid)["outputs"]["5"]["medialab_objects"]
        assert obj["key"] == key_for(obj["sha256"]) and (obj["width"], obj["height"]) == (60, 40)
        with store.open(obj["key"]) as f:
            assert len(f.read()) == obj["size"] == store.size(obj["key"])
        info = httpx.get(f"{direct_worker.url}/medialab/info").json()
        assert info["storage"]["bucket"] == BUCKET and info["max_upload_mb"] == 1
        # a size limit that the object is over fails the node, naming the limit
        graph["1"]["inputs"].update(max_mb=1, source=store.put_stream([b"x" * (2 << 20)]).key)
        _, seen = run_prompt(client, monitor, graph)
        ends = [e for e in seen if e["type"] in ("execution_error", "execution_success")]
        assert [e["type"] for e in ends] == ["execution_error"], seen
        assert "over the limit" in ends[0]["data"]["exception_message"]
    finally:
        monitor.stop()
        client.close()


def test_store_outage_on_the_direct_path_waits_and_stores_once(settings: Settings,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pack's save node waits out the outage on the server; the job ends SUCCEEDED on its first attempt."""
    s3 = S3Server().start()
    (worker,) = start_workers(tmp_path_factory, 1, env=s3_env(s3))
    try:
        with s3_api(settings, s3, [worker.url], "direct") as api:
            frame = upload(api, png_bytes(512, 512, (200, 120, 20)))  # ~4 s on the CPU
            job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
            attempt = wait_until(lambda: attempts_of(api, job["id"]), what="dispatched")[0]
            wait_until(lambda: running_on(worker.url, attempt["id"]), what="prompt running")
            time.sleep(1.0)  # the input is loaded; the upscale runs
            s3.stop()
            wait_until(lambda: "object store unreachable" in worker.log_path.read_text(), timeout=120,
                       what="the save node waiting for the store")
            s3.start()
            final = wait(api, job["id"], timeout=120)
            assert final["state"] == "SUCCEEDED", final["error"]
            assert [a["state"] for a in final["attempts"]] == ["SUCCEEDED"]
            (out,) = final["outputs"]
            assert api.client.app.state.ctx.store.size(key_for(out["sha256"])) == out["size"]
            assert api.client.app.state.ctx.executor.bytes_through == 0
    finally:
        worker.stop()
        s3.stop()
