"""A batch's event stream is woken by the commits of this process (the bell), not only by its safety poll:
with the poll made 60 s long, a followed batch's cancel still reaches the stream, and ends it, at once."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orchestrator.api.routes import batches as batch_routes
from tests.conftest import FIXTURE_MODEL
from tests.integration.conftest import Api
from tests.integration.test_batches_api import frames


def test_a_followed_batch_hears_its_cancel_at_once(api_paused: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = api_paused
    monkeypatch.setattr(batch_routes, "BATCH_SAFETY_S", 60.0)
    ids = frames(api, 2)
    r = api.client.post("/v1/batches", headers=api.run, json={
        "template": "upscale-esrgan", "inputs": ids, "input_param": "image", "params": {"model": FIXTURE_MODEL}})
    assert r.status_code == 201, r.text
    batch = r.json()["id"]
    seen: list[dict] = []
    opened, ended = threading.Event(), threading.Event()

    def follow() -> None:
        with api.client.stream("GET", f"/v1/batches/{batch}/events", headers=api.reader) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                    if len(seen) == 2:  # the two QUEUED events: the stream is now waiting
                        opened.set()
        ended.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert opened.wait(30), seen
    time.sleep(0.5)  # the stream is asleep on its bell (or its 60 s safety poll)
    t0 = time.monotonic()
    assert api.client.post(f"/v1/batches/{batch}/cancel", headers=api.run).status_code == 200
    assert ended.wait(10), f"the stream did not hear the cancel: {seen}"
    took = time.monotonic() - t0
    assert [e["event"]["state"] for e in seen] == ["QUEUED", "QUEUED", "CANCELLED", "CANCELLED"]
    assert seen[-1]["counts"] == {"CANCELLED": 2}
    assert took < 10  # woken by the bell, far below the 60 s safety poll
