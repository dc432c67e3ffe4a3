"""The faces of burst tiers over HTTP: a provider registered with declared capabilities, changed, shown in
GET /v1/burst, in jobs (cost, provider job id) and in /metrics. The provider's URL answers nothing (port 9), so
nothing is dispatched to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

import pytest
from sqlmodel import select

from orchestrator.api.routes.servers import ServerAdd
from orchestrator.core.burst import SERVER_KINDS
from orchestrator.core.states import JobState
from orchestrator.db.tables import ApiKey, Artifact, Attempt, Job
from orchestrator.settings import Settings
from tests.integration.conftest import Api, make_api

PROVIDER = {"url": "http://127.0.0.1:9/", "name": "cloud", "kind": "comfy_api_v2", "tier": 1,
            "cost_per_gpu_s": 0.001, "cold_start_s": 20, "max_inflight": 3,
            "node_classes": ["LoadImage", "SaveImage", "ImageScaleBy"],
            "models": {"checkpoints": ["sd15.safetensors"]}}


@pytest.fixture
def burst_api(settings: Settings, comfy_url: str) -> Iterator[Api]:
    settings.comfy_servers = [comfy_url]
    settings.burst_templates = ["scale-by@v1"]
    settings.burst_wait_s = 30.0
    settings.burst_budget_day, settings.burst_budget_key_day = 5.0, 1.0
    with make_api(settings, dispatch=False) as api:
        yield api


def _ran_on_provider(api: Api, cost: float) -> str:
    """A finished job whose one attempt ran on the provider (as the executor records one); its id."""
    db = api.client.app.state.ctx.db
    with db.session() as s:
        key = s.exec(select(ApiKey).where(ApiKey.name == "test-run")).one()
        job = Job(template="scale-by", version=1, params={}, state=JobState.SUCCEEDED, api_key_id=key.id)
        s.add(job)
        s.flush()
        s.add(Attempt(job_id=job.id, number=1, server="http://127.0.0.1:9", state=JobState.SUCCEEDED, tier=1,
                      rate=0.001, cost=cost, gpu_s=cost / 0.001, remote_id="prov-42"))
        s.add(Artifact(origin=f"job:{job.id}:0", sha256="0" * 64, size=1, content_type="image/png",
                       filename="a.png", key="k/a.png", role="output", job_id=job.id, provider="cloud",
                       remote_job_id="prov-42"))
        s.commit()
        return job.id


def test_a_provider_is_registered_changed_and_shown(burst_api: Api) -> None:
    c, admin = burst_api.client, burst_api.admin
    r = c.post("/v1/servers", json=PROVIDER, headers=admin)
    assert r.status_code == 201, r.text
    srv = r.json()
    assert (srv["kind"], srv["tier"], srv["cost_per_gpu_s"], srv["cold_start_s"], srv["max_inflight"]) == \
        ("comfy_api_v2", 1, 0.001, 20.0, 3)
    assert srv["node_classes"] == 3 and srv["models"] == {"checkpoints": ["sd15.safetensors"]}
    assert srv["healthy"] is False  # asked its health only: nothing answers on port 9

    r = c.patch("/v1/servers/cloud", json={"tier": 2, "cost_per_gpu_s": 0.002, "max_inflight": None,
                                           "node_classes": ["LoadImage", "SaveImage"]}, headers=admin)
    assert r.status_code == 200, r.text
    srv = r.json()
    assert (srv["tier"], srv["cost_per_gpu_s"], srv["cold_start_s"], srv["max_inflight"], srv["node_classes"]) == \
        (2, 0.002, 20.0, None, 2)
    assert c.patch("/v1/servers/nope", json={"tier": 1}, headers=admin).status_code == 404
    assert c.patch("/v1/servers/cloud", json={"tier": 1}, headers=burst_api.run).status_code == 403
    listed = {s["name"]: s for s in c.get("/v1/servers", headers=burst_api.reader).json()}
    assert listed["cloud"]["tier"] == 2 and listed["cloud"]["kind"] == "comfy_api_v2"
    local = next(s for s in listed.values() if s["name"] != "cloud")
    assert (local["kind"], local["tier"]) == ("comfyui", 0)

    job_id = _ran_on_provider(burst_api, 0.25)
    job = c.get(f"/v1/jobs/{job_id}", headers=burst_api.reader).json()
    assert job["cost"] == 0.25 and job["local_only"] is False
    assert [(a["tier"], a["cost"], a["gpu_s"], a["remote_id"]) for a in job["attempts"]] == [(1, 0.25, 250.0,
                                                                                              "prov-42")]
    assert (job["outputs"][0]["provider"], job["outputs"][0]["remote_job_id"]) == ("cloud", "prov-42")
    listing = c.get("/v1/jobs", headers=burst_api.reader).json()
    assert next(j for j in listing if j["id"] == job_id)["cost"] == 0.25

    status = c.get("/v1/burst", headers=burst_api.run).json()
    assert status["policy"] == {"templates": ["scale-by@v1"], "wait_s": 30.0, "template_wait_s": {},
                                "urgent_priority": 50, "urgent_wait_s": 0.0}
    assert status["budgets"]["day"] == {"cap": 5.0, "spent": 0.25, "left": 4.75}
    assert status["budgets"]["month"] == {"cap": None, "spent": 0.25, "left": None}
    assert status["budgets"]["key_day"] == {"cap": 1.0, "spent": 0.25, "left": 0.75}  # the run key's job
    assert c.get("/v1/burst", headers=burst_api.admin).json()["budgets"]["key_day"]["spent"] == 0.0
    [cloud] = status["servers"]
    assert cloud == {"name": "cloud", "url": "http://127.0.0.1:9", "kind": "comfy_api_v2", "tier": 2,
                     "state": "active", "healthy": False, "inflight": 0, "max_inflight": 2,
                     "cost_per_gpu_s": 0.002, "cold_start_s": 20.0, "spent_day": 0.25, "spent_month": 0.25,
                     "jobs_day": 1}

    metrics = c.get("/metrics", headers=burst_api.reader).text
    assert 'medialab_burst_spend{window="day"} 0.25' in metrics
    assert 'medialab_burst_spend{window="month"} 0.25' in metrics
    assert 'medialab_burst_cost_total{server="cloud"} 0.25' in metrics
    assert 'medialab_burst_jobs_total{server="cloud"} 1.0' in metrics


@pytest.mark.parametrize(("body", "field"), [
    ({**PROVIDER, "tier": 10}, "tier"),
    ({**PROVIDER, "cost_per_gpu_s": -1}, "cost_per_gpu_s"),
    ({**PROVIDER, "max_inflight": 0}, "max_inflight"),
    ({**PROVIDER, "kind": "lambda"}, "kind"),
    ({k: v for k, v in PROVIDER.items() if k not in ("node_classes", "models")}, "node classes"),
    ({**PROVIDER, "node_classes": None, "models": {"checkpoints": ["a.safetensors"]}}, "node_classes"),
])
def test_bad_tiering_is_422_naming_the_field(burst_api: Api, body: dict, field: str) -> None:
    r = burst_api.client.post("/v1/servers", json=body, headers=burst_api.admin)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert burst_api.client.get("/v1/burst", headers=burst_api.admin).json()["servers"] == []


def test_the_kinds_of_the_body_are_the_kinds_of_the_rules() -> None:
    assert get_args(ServerAdd.model_fields["kind"].annotation) == SERVER_KINDS


def test_changing_a_local_servers_capabilities_is_refused(burst_api: Api) -> None:
    c = burst_api.client
    local = c.get("/v1/servers", headers=burst_api.admin).json()[0]["name"]
    r = c.patch(f"/v1/servers/{local}", json={"tier": 11}, headers=burst_api.admin)
    assert r.status_code == 422 and "tier" in r.text
    r = c.patch(f"/v1/servers/{local}", json={"node_classes": ["X"]}, headers=burst_api.admin)
    assert r.status_code == 422 and "probed, not declared" in r.text
    r = c.patch(f"/v1/servers/{local}", json={"cold_start_s": 5}, headers=burst_api.admin)
    assert r.status_code == 200 and r.json()["cold_start_s"] == 5.0
