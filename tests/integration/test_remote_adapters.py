"""The burst adapters against real parts: ``ApiV2Provider`` through a real comfy-api-proxy (with ``--token``) in
front of a real ComfyUI, ``RunPodProvider`` against the RunPod stand-in (tests/fakes/runpod.py) running on the same
ComfyUI."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orchestrator.comfy.api_v2 import ApiV2Provider
from orchestrator.comfy.provider import (
    KeyAlreadyUsed,
    Provider,
    RemoteRejected,
    RemoteState,
    RemoteStatus,
    RemoteUnreachable,
)
from orchestrator.comfy.runpod import RunPodProvider
from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.fakes.comfy_api_proxy import MISSING, ApiProxy, proxy_binary
from tests.fakes.runpod import RunPodStandIn

GRAPH = PROJECT_ROOT / "comfy_workflows" / "upscale-esrgan" / "v1" / "graph.json"
TOKEN = "proxy-secret-token"
W, H = 24, 16


def graph_for(bind: Any) -> dict[str, Any]:
    graph = json.loads(GRAPH.read_text())
    graph["1"]["inputs"]["image"] = bind
    graph["2"]["inputs"]["model_name"] = FIXTURE_MODEL
    return graph


def upload(remote: Provider, color: tuple[int, int, int] = (200, 40, 40)) -> Any:
    data = png_bytes(W, H, color)
    sha = hashlib.sha256(data).hexdigest()
    return remote.upload(io.BytesIO(data), f"{sha}.png", len(data), sha, "image/png")


def follow(remote: Provider, job_id: str, timeout: float = 60.0) -> RemoteStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = remote.status(job_id)
        if status.state.terminal:
            return status
        time.sleep(0.1)
    raise AssertionError(f"{job_id} not finished in {timeout}s")


def assert_upscaled(remote: Provider, status: RemoteStatus) -> None:
    assert status.state is RemoteState.succeeded, status
    assert len(status.outputs) == 1
    data = b"".join(remote.open_output(status.outputs[0]))
    assert data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(data)).size == (W * 4, H * 4)  # the fixture model enlarges x4


# -- Comfy API v2 through comfy-api-proxy ------------------------------------------------------------
@pytest.fixture(scope="module")
def proxy(comfy_pair: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProxy]:
    if proxy_binary() is None:
        pytest.skip(MISSING)
    p = ApiProxy(comfy_pair[1], tmp_path_factory.mktemp("proxy"), token=TOKEN).start()
    yield p
    p.stop()


@pytest.fixture
def v2(proxy: ApiProxy) -> Iterator[ApiV2Provider]:
    proxy.start()  # again, where a test killed it
    remote = ApiV2Provider(proxy.url, token=TOKEN, timeout=10)
    yield remote
    remote.close()


def test_v2_submit_find_follow_and_fetch(v2: ApiV2Provider) -> None:
    assert v2.health().ok
    up = upload(v2)
    assert up.bind["__type"] == "core/ASSET"
    assert upload(v2).bind == up.bind  # the same bytes again: the cached asset, still there
    key = str(uuid.uuid4())
    job_id = v2.submit(graph_for(up.bind), key, [up])
    with pytest.raises(KeyAlreadyUsed) as err:
        v2.submit(graph_for(up.bind), key, [up])
    assert err.value.code == "idempotency_key_reuse"
    assert v2.find(key) == job_id
    assert v2.find(str(uuid.uuid4())) is None
    assert_upscaled(v2, follow(v2, job_id))


def test_v2_events_end_at_the_terminal_snapshot(v2: ApiV2Provider) -> None:
    up = upload(v2, (10, 200, 30))
    job_id = v2.submit(graph_for(up.bind), str(uuid.uuid4()), [up])
    snapshots = list(v2.events(job_id))
    assert snapshots[-1].state is RemoteState.succeeded
    assert all(not s.state.terminal for s in snapshots[:-1])
    assert_upscaled(v2, snapshots[-1])


def test_v2_cancel_is_a_request(v2: ApiV2Provider) -> None:
    up = upload(v2, (90, 90, 250))
    job_id = v2.submit(graph_for(up.bind), str(uuid.uuid4()), [up])
    v2.cancel(job_id)  # 200 "canceling"; ComfyUI 0.3.75 runs the prompt to the end anyway
    final = follow(v2, job_id)
    assert final.state in (RemoteState.succeeded, RemoteState.cancelled)


def test_v2_refusals(v2: ApiV2Provider) -> None:
    with pytest.raises(RemoteRejected) as err:
        v2.submit({"1": {"class_type": "NoSuchNode", "inputs": {}}}, str(uuid.uuid4()), [])
    assert err.value.http_status == 422 and err.value.code == "invalid_workflow"
    with pytest.raises(RemoteRejected) as err:
        v2.status("no-such-job")
    assert err.value.http_status == 404


def test_v2_wrong_token(proxy: ApiProxy) -> None:
    bad = ApiV2Provider(proxy.url, token="wrong-token", timeout=10)
    try:
        health = bad.health()
        assert not health.ok and "401" in health.detail
        assert "wrong-token" not in health.detail
        with pytest.raises(RemoteRejected) as err:
            bad.find("anything")
        assert err.value.http_status == 401
    finally:
        bad.close()


def test_v2_proxy_killed_then_back(v2: ApiV2Provider, proxy: ApiProxy) -> None:
    up = upload(v2, (250, 250, 0))
    key = str(uuid.uuid4())
    job_id = v2.submit(graph_for(up.bind), key, [up])
    follow(v2, job_id)
    proxy.kill()
    with pytest.raises(RemoteUnreachable):
        v2.status(job_id)
    assert not v2.health().ok
    proxy.start()  # same port, same --state-dir: the job and its key survive
    assert v2.find(key) == job_id
    assert v2.status(job_id).state is RemoteState.succeeded


# -- RunPod worker-comfyui, the stand-in --------------------------------------------------------------
@pytest.fixture(scope="module")
def runpod_endpoint(comfy_pair: list[str]) -> Iterator[RunPodStandIn]:
    stand_in = RunPodStandIn(comfy_pair[1], TOKEN).start()
    yield stand_in
    stand_in.stop()


def test_runpod_flow(runpod_endpoint: RunPodStandIn) -> None:
    rp = RunPodProvider(runpod_endpoint.url, token=TOKEN, timeout=10)
    try:
        health = rp.health()
        assert health.ok and health.capacity == 1
        up = upload(rp, (40, 120, 200))
        assert isinstance(up.bind, str) and up.body["name"] == up.bind
        job_id = rp.submit(graph_for(up.bind), "attempt-1", [up])
        assert rp.find("attempt-1") is None  # RunPod keeps no key of ours
        final = follow(rp, job_id)
        assert final.gpu_s is not None and final.gpu_s > 0
        assert_upscaled(rp, final)
        with pytest.raises(NotImplementedError):
            next(iter(rp.events(job_id)))
        with pytest.raises(RemoteRejected) as err:
            rp.status("no-such-job")
        assert err.value.http_status == 404
    finally:
        rp.close()


def test_runpod_cancel_queued(runpod_endpoint: RunPodStandIn) -> None:
    rp = RunPodProvider(runpod_endpoint.url, token=TOKEN, timeout=10)
    try:
        ups = [upload(rp, (i * 60, 10, 10)) for i in range(2)]
        first = rp.submit(graph_for(ups[0].bind), "a", [ups[0]])
        second = rp.submit(graph_for(ups[1].bind), "b", [ups[1]])
        rp.cancel(second)
        assert follow(rp, second).state is RemoteState.cancelled
        assert follow(rp, first).state is RemoteState.succeeded
    finally:
        rp.close()


def test_runpod_bad_token(runpod_endpoint: RunPodStandIn, tmp_path: Path) -> None:
    rp = RunPodProvider(runpod_endpoint.url, token="wrong-token", timeout=10)
    try:
        health = rp.health()
        assert not health.ok and "401" in health.detail and "wrong-token" not in health.detail
        with pytest.raises(RemoteRejected) as err:
            rp.submit(graph_for("x.png"), "k", [])
        assert err.value.http_status == 401
    finally:
        rp.close()
