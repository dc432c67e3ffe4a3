"""Cancel of a job that is running on ComfyUI: interrupted by its own prompt_id, then CANCELLED."""

from __future__ import annotations

import time

import httpx

from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api
from tests.integration.test_jobs_api import submit, upload, wait


def test_cancel_running_job_interrupts_its_prompt(api: Api) -> None:
    frame = upload(api, png_bytes(1024, 1024, (10, 120, 30)))  # big enough to run for seconds on the CPU
    job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until ComfyUI is executing it
        detail = api.client.get(f"/v1/jobs/{job['id']}", headers=api.reader).json()
        if detail["progress"] > 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("job never reported progress")
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.run)
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    final = wait(api, job["id"], timeout=60)
    assert final["state"] == "CANCELLED", final
    assert final["attempts"][0]["state"] == "CANCELLED"
    assert final["outputs"] == []
    server = api.client.app.state.ctx.pool.servers[0].url
    deadline = time.monotonic() + 10  # ComfyUI lists the interrupted prompt until its executor lets go of it
    while (queue := httpx.get(f"{server}/queue").json())["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
