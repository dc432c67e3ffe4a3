"""A real ComfyUI behind an authenticating reverse proxy (issue 16): the native client and websocket monitor carry
a bearer token (or the URL's user:password as Basic auth); without the right credentials every request is a 401."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from orchestrator.comfy.client import ComfyAuthError, ComfyClient, ComfyError, FileRef, output_files
from orchestrator.comfy.monitor import ServerMonitor
from orchestrator.runtime.pool import probe
from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.fakes.auth_proxy import AuthProxy

TOKEN = "s3cr3t-t0ken"
USER, PASSWORD = "media", "p@ss:w/rd"  # characters that must be percent-encoded in a URL
BASIC_URL_PASSWORD = "p%40ss%3Aw%2Frd"
GRAPH = PROJECT_ROOT / "comfy_workflows" / "upscale-esrgan" / "v1" / "graph.json"


@pytest.fixture(scope="module")
def target(comfy_pair: list[str]) -> str:
    return comfy_pair[1]


@pytest.fixture(scope="module")
def token_proxy(target: str) -> Iterator[AuthProxy]:
    with AuthProxy(target, token=TOKEN) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def basic_proxy(target: str) -> Iterator[AuthProxy]:
    with AuthProxy(target, basic=(USER, PASSWORD)) as proxy:
        yield proxy


class States:
    """A monitor's ``on_state`` calls, waited on."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, str | None]] = []
        self.changed = threading.Condition()

    def __call__(self, up: bool, error: str | None) -> None:
        with self.changed:
            self.calls.append((up, error))
            self.changed.notify_all()

    def wait_down(self, timeout: float = 10.0) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: any(not up for up, _ in self.calls), timeout), self.calls
            return next(error for up, error in self.calls if not up) or ""


def run_upscale(client: ComfyClient, monitor: ServerMonitor) -> tuple[list[str], dict[str, Any]]:
    """Upload a frame, submit the ESRGAN graph as the executor does (subscribe, then submit with the monitor's
    client id) and follow its websocket events to the end; returns the event types and the /history entry."""
    tag = uuid.uuid4()
    color = (tag.bytes[0], tag.bytes[1], tag.bytes[2])  # a new frame each run: nothing of an earlier run is cached
    name = client.upload(png_bytes(32, 24, color), f"auth-{tag.hex[:8]}.png", subfolder="medialab")
    graph = json.loads(GRAPH.read_text())
    graph["1"]["inputs"]["image"] = name
    graph["2"]["inputs"]["model_name"] = FIXTURE_MODEL
    graph["4"]["inputs"]["filename_prefix"] = "medialab/auth"
    prompt_id = str(uuid.uuid4())
    assert monitor.connected.wait(15), "the monitor did not connect through the proxy"
    kinds: list[str] = []
    with monitor.subscribe(prompt_id) as events:
        client.submit(graph, prompt_id, monitor.client_id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            event = events.recv(timeout=1.0)
            if event is None:
                continue
            kinds.append(event["type"])
            if event["type"] == "execution_error":
                pytest.fail(f"the prompt failed: {event['data']}")
            if event["type"] == "executing" and event["data"].get("node") is None:
                break
        else:
            pytest.fail(f"no end of the prompt within 120 s; events: {kinds}")
    entry = client.history(prompt_id)
    assert entry is not None and entry["status"]["status_str"] == "success", entry
    return kinds, entry


def check_output(client: ComfyClient, entry: dict[str, Any]) -> None:
    refs: list[FileRef] = output_files(entry["outputs"]["4"])
    assert len(refs) == 1
    image = Image.open(io.BytesIO(b"".join(client.stream_view(refs[0]))))
    assert image.size == (128, 96)  # the x4 fixture model on a 32x24 frame, read back through the proxy


def test_token_probe_and_prompt(token_proxy: AuthProxy) -> None:
    client = ComfyClient(token_proxy.url, token=TOKEN)
    monitor = ServerMonitor(token_proxy.url, f"auth-{uuid.uuid4().hex}", token=TOKEN).start()
    try:
        caps = probe(client)
        assert FIXTURE_MODEL in caps.models["upscale_models"]
        assert {"LoadImage", "ImageUpscaleWithModel", "SaveImage"} <= caps.node_classes
        assert caps.comfy_version and caps.pack is not None  # /medialab/info came through too

        frames_before = token_proxy.ws_frames
        kinds, entry = run_upscale(client, monitor)
        assert {"execution_start", "executing", "executed", "execution_success"} <= set(kinds), kinds
        assert token_proxy.ws_frames > frames_before
        check_output(client, entry)
        assert TOKEN not in repr(client) and TOKEN not in repr(monitor)
    finally:
        monitor.stop()
        client.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_refused(token_proxy: AuthProxy, token: str | None) -> None:
    client = ComfyClient(token_proxy.url, token=token)
    refused = token_proxy.refused
    try:
        for call in (client.system_stats, client.object_info, client.pack_info, lambda: probe(client)):
            with pytest.raises(ComfyError, match="401") as info:
                call()
            assert isinstance(info.value, ComfyAuthError)
            assert "credentials" in str(info.value)
            if token:
                assert token not in str(info.value)
        with pytest.raises(ComfyAuthError, match="401"):
            client.submit({}, str(uuid.uuid4()), "x")
        with pytest.raises(ComfyAuthError, match="401"):
            list(client.stream_view(FileRef("x.png", "", "output")))
    finally:
        client.close()
    assert token_proxy.refused >= refused + 6

    states = States()
    monitor = ServerMonitor(token_proxy.url, f"auth-{uuid.uuid4().hex}", on_state=states, token=token).start()
    try:
        error = states.wait_down()
        assert "401" in error and "credentials" in error
        if token:
            assert token not in error
        assert not monitor.connected.is_set()
    finally:
        monitor.stop()


def test_basic_auth_through_the_url(basic_proxy: AuthProxy) -> None:
    host = basic_proxy.url.removeprefix("http://")
    url = f"http://{USER}:{BASIC_URL_PASSWORD}@{host}"
    client = ComfyClient(url)
    monitor = ServerMonitor(url, f"auth-{uuid.uuid4().hex}").start()
    try:
        assert FIXTURE_MODEL in probe(client).models["upscale_models"]
        kinds, entry = run_upscale(client, monitor)
        assert "execution_success" in kinds
        check_output(client, entry)
        assert PASSWORD not in repr(client) and BASIC_URL_PASSWORD not in repr(monitor)
    finally:
        monitor.stop()
        client.close()

    wrong = f"http://{USER}:nope@{host}"
    client = ComfyClient(wrong)
    states = States()
    monitor = ServerMonitor(wrong, f"auth-{uuid.uuid4().hex}", on_state=states).start()
    try:
        with pytest.raises(ComfyAuthError, match="401.*refused our credentials"):
            client.system_stats()
        assert "refused our credentials (401)" in states.wait_down()
    finally:
        monitor.stop()
        client.close()
