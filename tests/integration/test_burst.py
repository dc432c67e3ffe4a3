"""Burst tiers end to end: a local ComfyUI (tier 0) and providers (tier 1) in front of another real ComfyUI.

- Comfy API v2: a real ``comfy-api-proxy`` 0.1.6 subprocess in front of a real ComfyUI.
- A remote ComfyUI behind a token: a real ComfyUI behind a small authenticating reverse proxy
  (tests/fakes/auth_proxy.py, standing in for the nginx a deployment puts there), driven natively.
- RunPod worker-comfyui: no real endpoint can exist here, so a stand-in that follows RunPod's documented request and
  status shapes (tests/fakes/runpod.py) runs the jobs on a real ComfyUI.

The local tier is saturated by a big frame (seconds on the CPU) with ``MEDIALAB_MAX_INFLIGHT=1``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.fakes.auth_proxy import AuthProxy
from tests.fakes.comfy_api_proxy import MISSING, ApiProxy, proxy_binary
from tests.fakes.runpod import RunPodStandIn
from tests.integration.conftest import Api, make_api
from tests.integration.test_jobs_api import upload, wait

PARAMS = {"model": FIXTURE_MODEL}
FRAMES = itertools.count(int(time.time()) % 50_000)


@pytest.fixture(scope="module")
def remote_comfy(comfy_pair: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The ComfyUI the providers run on, and its /object_info dumped to a file (what an operator declares)."""
    dump = tmp_path_factory.mktemp("declared") / "object_info.json"
    dump.write_text(httpx.get(f"{comfy_pair[1]}/object_info", timeout=30).text)
    return comfy_pair[1], dump


@pytest.fixture(scope="module")
def proxy(remote_comfy: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProxy]:
    if proxy_binary() is None:
        pytest.skip(MISSING)
    p = ApiProxy(remote_comfy[0], tmp_path_factory.mktemp("proxy-state")).start()
    yield p
    p.stop()


def servers_file(tmp_path: Path, local: str, dump: Path, *providers: dict[str, Any], drain_local: bool = False) -> Path:
    lines = [f'[[server]]\nname = "local"\nurl = "{local}"\n']
    for p in providers:
        entry = {"tier": 1, "cost_per_gpu_s": 0.002, "cold_start_s": 1.0, "max_inflight": 2, **p}
        lines.append("[[server]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items()))
        if entry.get("kind", "comfyui") != "comfyui":
            lines.append(f'object_info = "{dump}"\nmodels = {{ upscale_models = ["{FIXTURE_MODEL}"] }}\n')
    path = tmp_path / "servers.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def burst_settings(settings: Settings) -> Settings:
    settings.max_inflight = 1  # one job at a time on the local server: a second one waits (or bursts)
    settings.burst_templates = ["upscale-esrgan"]
    settings.burst_wait_s = 0.0
    settings.burst_poll_s = 0.2
    settings.burst_unreachable_s = 4.0
    return settings


def start(settings: Settings, path: Path, **extra: Any) -> Any:
    settings.servers_file = path
    for k, v in extra.items():
        setattr(settings, k, v)
    return make_api(settings, dispatch=True)


def submit(api: Api, frame: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/v1/jobs", headers=api.run, json={"template": "upscale-esrgan",
                                                             "params": {"image": frame["id"], **PARAMS}})
    assert r.status_code == 201, r.text
    return r.json()


def frame(size: int) -> bytes:
    """A frame no earlier test sent: ComfyUI would answer a repeated prompt from its cache at once."""
    n = next(FRAMES)
    return png_bytes(size, size, (n % 256, n // 256 % 256, 77))


def saturate(api: Api) -> dict[str, Any]:
    """A big frame running on the local server (seconds on the CPU)."""
    job = submit(api, upload(api, frame(1024), "big.png"))
    until(api, job["id"], lambda j: j["state"] == "RUNNING")
    return job


def until(api: Api, job_id: str, cond: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.client.get(f"/v1/jobs/{job_id}", headers=api.reader).json()
        if cond(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}: condition not met in {timeout}s; last {job}")


def events(api: Api, job_id: str) -> list[str]:
    return [e["reason"] for e in api.client.get(f"/v1/jobs/{job_id}/events?follow=false", headers=api.reader).json()]


def submitted(api: Api, job_id: str) -> dict[str, Any]:
    """Wait until the job's provider answered the submit (its attempt has the provider's job id)."""
    return until(api, job_id, lambda j: j["attempts"] and j["attempts"][-1].get("remote_id"))


def test_a_job_bursts_when_local_is_saturated(burst_settings: Settings, tmp_path: Path, comfy_pair: list[str],
                                              remote_comfy: tuple[str, Path], proxy: ApiProxy) -> None:
    path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "cloud", "url": proxy.url,
                                                                    "kind": "comfy_api_v2"})
    with start(burst_settings, path) as api:
        big = saturate(api)
        small = submit(api, upload(api, png_bytes(32, 24, (200, 30, 30))))
        done = wait(api, small["id"])
        assert done["state"] == "SUCCEEDED", done
        [attempt] = done["attempts"]
        assert attempt["server"] == proxy.url and attempt["tier"] == 1 and attempt["remote_id"]
        assert attempt["gpu_s"] > 0 and attempt["cost"] == pytest.approx(0.002 * attempt["gpu_s"])
        assert done["cost"] == pytest.approx(attempt["cost"])
        [out] = done["outputs"]
        assert out["provider"] == "cloud" and out["remote_job_id"] == attempt["remote_id"]
        assert out["width"] == 32 * 4  # the fixture model enlarges: it ran on the provider's ComfyUI
        said = events(api, small["id"])
        assert any(r.startswith("burst to cloud: local wait") for r in said), said
        assert any(r.startswith(f"submitted to cloud as job {attempt['remote_id']}") for r in said), said
        local = wait(api, big["id"])
        assert local["state"] == "SUCCEEDED" and local["attempts"][0]["tier"] == 0 and local["cost"] == 0
        assert local["outputs"][0]["provider"] is None
        status = api.client.get("/v1/burst", headers=api.reader).json()
        assert status["budgets"]["day"]["spent"] == pytest.approx(attempt["cost"])
        metrics = api.client.get("/metrics", headers=api.admin).text
        assert 'medialab_burst_cost_total{server="cloud"}' in metrics


def test_a_template_not_allowed_to_burst_waits_for_local(burst_settings: Settings, tmp_path: Path,
                                                         comfy_pair: list[str], remote_comfy: tuple[str, Path],
                                                         proxy: ApiProxy) -> None:
    path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "cloud", "url": proxy.url,
                                                                    "kind": "comfy_api_v2"})
    with start(burst_settings, path, burst_templates=["video-retime"]) as api:
        saturate(api)
        small = wait(api, submit(api, upload(api, png_bytes(32, 24, (20, 30, 200))))["id"])
        assert small["state"] == "SUCCEEDED" and [a["tier"] for a in small["attempts"]] == [0]


def test_cancel_of_a_burst_job_is_asked_and_its_gpu_time_counted(burst_settings: Settings, tmp_path: Path,
                                                                 comfy_pair: list[str],
                                                                 remote_comfy: tuple[str, Path],
                                                                 proxy: ApiProxy) -> None:
    path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "cloud", "url": proxy.url,
                                                                    "kind": "comfy_api_v2"})
    with start(burst_settings, path) as api:
        saturate(api)
        job = submit(api, upload(api, frame(768), "slow.png"))
        submitted(api, job["id"])
        r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.run)
        assert r.status_code == 200, r.text
        final = wait(api, job["id"])
        assert final["state"] == "CANCELLED", final
        assert final["outputs"] == []  # ComfyUI 0.3.75 behind the proxy ran it to the end: its outputs are dropped
        [attempt] = final["attempts"]
        assert attempt["state"] == "CANCELLED" and attempt["gpu_s"] > 0 and attempt["cost"] > 0
        said = events(api, job["id"])
        assert any("cancel asked of cloud" in r for r in said), said


def test_the_proxy_killed_mid_job_loses_nothing_and_stores_once(burst_settings: Settings, tmp_path: Path,
                                                                comfy_pair: list[str],
                                                                remote_comfy: tuple[str, Path],
                                                                proxy: ApiProxy) -> None:
    """Killed and back within burst_unreachable_s: the same remote job is followed to its end, stored once.
    Killed for good: the provider is marked down and the job runs locally, stored once."""
    path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "cloud", "url": proxy.url,
                                                                    "kind": "comfy_api_v2"})
    with start(burst_settings, path, burst_unreachable_s=20.0) as api:
        saturate(api)
        job = submit(api, upload(api, frame(640), "slow1.png"))
        remote_id = submitted(api, job["id"])["attempts"][0]["remote_id"]
        proxy.kill()
        time.sleep(1.5)
        proxy.start()  # same port, same --state-dir: it knows the job again
        final = wait(api, job["id"])
        assert final["state"] == "SUCCEEDED", final
        assert [a["remote_id"] for a in final["attempts"]] == [remote_id] and len(final["outputs"]) == 1
    burst_settings.home = tmp_path / "again"  # a database of its own (the first one's big frame is still RUNNING)
    with start(burst_settings, path, burst_unreachable_s=3.0) as api:
        saturate(api)
        job = submit(api, upload(api, frame(640), "slow2.png"))
        submitted(api, job["id"])
        proxy.kill()
        try:
            final = wait(api, job["id"], timeout=180)
            assert final["state"] == "SUCCEEDED", final
            lost, local = final["attempts"]
            assert lost["tier"] == 1 and lost["state"] == "FAILED" and "did not answer" in lost["error"]["message"]
            assert local["tier"] == 0 and local["state"] == "SUCCEEDED" and final["local_only"] is True
            assert len(final["outputs"]) == 1 and final["outputs"][0]["provider"] is None
            cloud = next(s for s in api.client.get("/v1/servers", headers=api.reader).json() if s["name"] == "cloud")
            assert cloud["healthy"] is False
        finally:
            proxy.start()


def test_a_budget_reached_mid_batch_keeps_the_rest_local(burst_settings: Settings, tmp_path: Path,
                                                         comfy_pair: list[str], remote_comfy: tuple[str, Path],
                                                         proxy: ApiProxy) -> None:
    """Each burst job is estimated at 1.0 (rate 10/s x the 0.1 s default run time): with a daily cap of 1.5 the
    first one bursts; the next would break the cap and waits for the local server, saying why. The first one's
    real cost (10/s x its seconds, at least 0.15 s from submit to outputs) keeps the cap reached once it ends."""
    path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "cloud", "url": proxy.url,
                                                                    "kind": "comfy_api_v2", "cost_per_gpu_s": 10.0,
                                                                    "cold_start_s": 0.0})
    with start(burst_settings, path, burst_budget_day=1.5, burst_default_run_s=0.1) as api:
        saturate(api)
        frames = [upload(api, png_bytes(32, 24, (10 * i, 40, 40)), f"b{i}.png")["id"] for i in range(4)]
        r = api.client.post("/v1/batches", headers=api.run, json={
            "template": "upscale-esrgan", "inputs": frames, "input_param": "image", "params": PARAMS})
        assert r.status_code == 201, r.text
        jobs = [wait(api, j["id"], timeout=180) for j in
                api.client.get(f"/v1/batches/{r.json()['id']}/jobs", headers=api.reader).json()]
        assert all(j["state"] == "SUCCEEDED" for j in jobs), jobs
        burst = [j for j in jobs if j["attempts"][0]["tier"] == 1]
        local = [j for j in jobs if j["attempts"][0]["tier"] == 0]
        assert len(burst) == 1 and len(local) == 3
        for j in local:
            said = events(api, j["id"])
            assert any(r.startswith("not bursting: the daily burst budget (1.50) is reached") for r in said), said
        status = api.client.get("/v1/burst", headers=api.reader).json()
        assert status["budgets"]["day"]["spent"] == pytest.approx(burst[0]["cost"])


def test_burst_to_a_remote_comfyui_behind_a_token(burst_settings: Settings, tmp_path: Path, comfy_pair: list[str],
                                                  remote_comfy: tuple[str, Path]) -> None:
    with AuthProxy(remote_comfy[0], token="s3cret") as gate:
        path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "rented", "url": gate.url})
        with start(burst_settings, path, provider_tokens={"rented": "s3cret"}) as api:
            saturate(api)
            done = wait(api, submit(api, upload(api, png_bytes(32, 24, (5, 200, 30))))["id"])
            assert done["state"] == "SUCCEEDED", done
            [attempt] = done["attempts"]
            assert attempt["tier"] == 1 and attempt["server"] == gate.url and attempt["cost"] > 0
            assert done["outputs"][0]["provider"] == "rented"
            assert gate.forwarded > 0
        burst_settings.home = tmp_path / "again"
        with start(burst_settings, path, provider_tokens={}) as api:  # no token: refused, shown, never used
            rented = next(s for s in api.client.get("/v1/servers", headers=api.reader).json()
                          if s["name"] == "rented")
            assert rented["healthy"] is False and "401" in (rented["last_error"] or ""), rented


def test_burst_to_runpod_worker_comfyui(burst_settings: Settings, tmp_path: Path, comfy_pair: list[str],
                                        remote_comfy: tuple[str, Path]) -> None:
    """RunPod cannot exist here: the stand-in follows its documented shapes and runs the job on a real ComfyUI."""
    with RunPodStandIn(remote_comfy[0], token="rp-key") as endpoint:
        path = servers_file(tmp_path, comfy_pair[0], remote_comfy[1], {"name": "runpod", "url": endpoint.url,
                                                                        "kind": "runpod", "cost_per_gpu_s": 0.01})
        with start(burst_settings, path, provider_tokens={"runpod": "rp-key"}) as api:
            api.client.post("/v1/servers/local/drain", headers=api.admin)  # no local capacity at all
            api.client.app.state.ctx.pool.sync()  # now, not at the next registry sync
            done = wait(api, submit(api, upload(api, png_bytes(32, 24, (250, 200, 30))))["id"])
            assert done["state"] == "SUCCEEDED", done
            [attempt] = done["attempts"]
            assert attempt["tier"] == 1 and attempt["remote_id"]
            assert attempt["cost"] == pytest.approx(0.01 * attempt["gpu_s"])  # delayTime + executionTime
            [out] = done["outputs"]
            assert out["provider"] == "runpod" and out["remote_job_id"] == attempt["remote_id"]
            assert out["width"] == 32 * 4
