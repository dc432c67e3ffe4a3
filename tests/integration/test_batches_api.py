"""Batches through the API against a real ComfyUI server on the CPU: a batch of upscales to SUCCEEDED with its
counts, outputs and events; one bad item refusing the whole batch; cancel and retry; who sees which batch."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api


def upload(api: Api, data: bytes) -> str:
    r = api.client.post("/v1/artifacts", headers=api.run, files={"file": ("frame.png", data)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def frames(api: Api, n: int) -> list[str]:
    return [upload(api, png_bytes(16 + 8 * i, 16, (i, 2, 3))) for i in range(n)]


def wait(api: Api, batch_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = api.client.get(f"/v1/batches/{batch_id}", headers=api.reader).json()
        if batch["finished"]:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} not finished after {timeout}s: {batch['counts']}")


def test_a_batch_of_upscales_runs_to_succeeded_with_counts_outputs_and_events(api: Api) -> None:
    ids = frames(api, 3)
    r = api.client.post("/v1/batches", headers=api.run, json={
        "label": "three frames", "template": "upscale-esrgan", "inputs": ids, "input_param": "image",
        "params": {"model": FIXTURE_MODEL}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["items"], created["total"], created["template"]) == (3, 3, "upscale-esrgan")
    assert created["request"]["kind"] == "grid" and created["request"]["inputs"] == 3
    batch = wait(api, created["id"])
    assert batch["counts"] == {"SUCCEEDED": 3} and batch["done"] == 3 and batch["progress"] == 1.0
    assert batch["eta_s"] is None and batch["label"] == "three frames"
    assert len(batch["outputs"]) == 3 and {o["output_name"] for o in batch["outputs"]} == {"upscaled"}
    assert [o["input_artifacts"] for o in batch["outputs"]] == [[i] for i in ids]  # by item
    jobs = api.client.get(f"/v1/batches/{created['id']}/jobs", headers=api.reader).json()
    assert [j["params"]["image"] for j in jobs] == ids and {j["state"] for j in jobs} == {"SUCCEEDED"}
    events = api.client.get(f"/v1/batches/{created['id']}/events?follow=false", headers=api.reader).json()
    assert [e["event"]["state"] for e in events].count("SUCCEEDED") == 3
    assert {e["batch_item"] for e in events} == {0, 1, 2} and events[-1]["counts"] == {"SUCCEEDED": 3}
    with api.client.stream("GET", f"/v1/batches/{created['id']}/events", headers=api.reader) as stream:
        data = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert len(data) == len(events)  # the stream ends by itself once every job is final
    listed = api.client.get("/v1/batches", headers=api.run).json()
    assert [b["id"] for b in listed] == [created["id"]]
    assert api.client.get("/v1/batches", headers=api.reader).json() == []  # another key's batches are not listed
    assert [b["id"] for b in api.client.get("/v1/batches", headers=api.admin).json()] == [created["id"]]


def test_a_batch_with_one_bad_item_is_refused_whole_naming_it(api_paused: Api) -> None:
    api = api_paused
    ids = frames(api, 2)
    items = [{"template": "upscale-esrgan", "params": {"image": ids[0], "model": FIXTURE_MODEL}},
             {"template": "upscale-esrgan", "params": {"image": ids[1], "model": FIXTURE_MODEL, "resize": 99}},
             {"template": "upscale-esrgan", "params": {"image": ids[1], "model": FIXTURE_MODEL}}]
    r = api.client.post("/v1/batches", headers=api.run, json={"items": items})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert "1 of 3 batch items are invalid (items 1); nothing was submitted" in problem["detail"]
    assert [(e["item"], e["param"]) for e in problem["errors"]] == [(1, "resize")]
    assert api.client.get("/v1/batches", headers=api.admin).json() == []
    assert api.client.get("/v1/jobs", headers=api.admin).json() == []


def test_cancel_then_retry_a_batch(api_paused: Api) -> None:
    api = api_paused
    ids = frames(api, 3)
    r = api.client.post("/v1/batches", headers=api.run, json={
        "template": "upscale-esrgan", "inputs": ids[:1], "input_param": "image", "grid": {"resize": [0.5, 1.0, 2.0]},
        "params": {"model": FIXTURE_MODEL}})
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    assert r.json()["counts"] == {"QUEUED": 3}
    cancelled = api.client.post(f"/v1/batches/{batch_id}/cancel", headers=api.run).json()
    assert cancelled["counts"] == {"CANCELLED": 3} and cancelled["cancel_requested"] and cancelled["finished"]
    assert api.client.post(f"/v1/batches/{batch_id}/cancel", headers=api.run).status_code == 409
    retried = api.client.post(f"/v1/batches/{batch_id}/retry", headers=api.run).json()
    assert retried["counts"] == {"CANCELLED": 3, "QUEUED": 3} and not retried["cancel_requested"]
    jobs = api.client.get(f"/v1/batches/{batch_id}/jobs?state=QUEUED", headers=api.reader).json()
    assert sorted(j["params"]["resize"] for j in jobs) == [0.5, 1.0, 2.0]
    assert api.client.post(f"/v1/batches/{batch_id}/retry", headers=api.run).status_code == 409
    audit = api.client.get("/v1/audit?action=batch", headers=api.admin).json()
    assert [a["action"] for a in audit] == ["batch.retry", "batch.cancel", "batch.create"]
    assert api.client.get(f"/v1/batches/{batch_id[:8]}", headers=api.reader).json()["id"] == batch_id


def test_a_rerun_whose_items_are_all_done_answers_their_batch_and_writes_none(api_paused: Api) -> None:
    api = api_paused
    ids = frames(api, 2)
    body = {"items": [{"template": "upscale-esrgan", "params": {"image": i, "model": FIXTURE_MODEL}, "key": f"s/{i}"}
                      for i in ids]}
    first = api.client.post("/v1/batches", headers=api.run, json=body)
    assert first.status_code == 201, first.text
    again = api.client.post("/v1/batches", headers=api.run, json=body)
    assert again.status_code == 200, again.text
    answer = again.json()
    assert answer["id"] == first.json()["id"] and answer["total"] == 2
    jobs = api.client.get(f"/v1/batches/{answer['id']}/jobs", headers=api.reader).json()
    assert answer["skipped"] == {str(j["batch_item"]): j["id"] for j in jobs}
    assert {(j["batch_id"], j["batch_item"]) for j in jobs} == {(answer["id"], 0), (answer["id"], 1)}
    assert len(api.client.get("/v1/batches", headers=api.run).json()) == 1  # no empty batch
    alone = api.client.get(f"/v1/jobs/{jobs[0]['id']}", headers=api.reader).json()
    assert (alone["batch_id"], alone["batch_item"]) == (answer["id"], 0)


def test_a_whole_batch_idempotency_key_answers_the_same_batch_and_refuses_another_body(api_paused: Api) -> None:
    api = api_paused
    ids = frames(api, 2)
    body = {"template": "upscale-esrgan", "inputs": ids, "input_param": "image", "params": {"model": FIXTURE_MODEL}}
    headers = api.run | {"Idempotency-Key": "nightly-42"}
    first = api.client.post("/v1/batches", headers=headers, json=body)
    assert first.status_code == 201, first.text
    again = api.client.post("/v1/batches", headers=headers, json=body)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.json()["total"] == 2
    other = api.client.post("/v1/batches", headers=headers, json=body | {"label": "changed"})
    assert other.status_code == 422 and "nightly-42" in other.json()["detail"], other.text
    assert len(api.client.get("/v1/batches", headers=api.run).json()) == 1
    assert len(api.client.get("/v1/jobs", headers=api.admin).json()) == 2
    fresh = api.client.post("/v1/batches", headers=api.run | {"Idempotency-Key": "nightly-43"}, json=body)
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
