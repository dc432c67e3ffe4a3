"""A pipeline as a batch item on a real ComfyUI server: a folder of two frames through the two-step ESRGAN
chain as one batch (runs counted, lineage across each chain), one bad input refusing the whole batch, and a
batch cancelled mid-way (its runs CANCELLED, no second step ever submitted)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.db.tables import Batch, Job, JobInput, PipelineRun
from orchestrator.settings import Settings
from tests.integration.conftest import Api, make_api
from tests.integration.test_pipeline_runs import chain, pipelines_dir, steps, upload
from tests.integration.test_pipeline_runs import wait as wait_run


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, settings: Settings, comfy_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API with a dispatcher on one real ComfyUI server, on each database, with the test chain."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    settings.pipelines_dir = pipelines_dir(tmp_path, chain())
    with make_api(settings, dispatch=True) as api:
        yield api


def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/v1/batches", headers=api.run, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait(api: Api, batch_id: str, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = api.client.get(f"/v1/batches/{batch_id}", headers=api.reader).json()
        if batch["finished"]:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} not finished after {timeout}s: {batch}")


def runs_of(api: Api, batch_id: str) -> list[dict[str, Any]]:
    with api.client.app.state.ctx.db.session() as s:
        ids = [r.id for r in s.exec(select(PipelineRun).where(PipelineRun.batch_id == batch_id)
                                    .order_by(PipelineRun.batch_item))]
    return [api.client.get(f"/v1/pipeline-runs/{i}", headers=api.reader).json() for i in ids]


def test_two_frames_through_the_chain_as_one_batch(api: Api) -> None:
    frames = [upload(api, (200, 40, 40)), upload(api, (40, 40, 200))]
    batch = create(api, {"pipeline": "twice", "inputs": frames, "label": "frames"})
    assert batch["total"] == 2 and not batch["finished"] and batch["request"]["kind"] == "pipeline", batch
    done = wait(api, batch["id"])
    assert done["counts"] == {"SUCCEEDED": 2} and done["done"] == 2 and done["progress"] == 1.0, done
    runs = runs_of(api, batch["id"])
    assert [r["state"] for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    jobs = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.reader).json()
    assert len(jobs) == 4 and {j["state"] for j in jobs} == {"SUCCEEDED"}  # every step's job is the batch's
    assert sorted(j["batch_item"] for j in jobs) == [0, 0, 1, 1]
    with api.client.app.state.ctx.db.session() as s:
        for item, (frame, run) in enumerate(zip(frames, runs, strict=True)):
            first, second = steps(run)["first"], steps(run)["second"]
            assert {i.artifact_id for i in s.exec(select(JobInput).where(JobInput.job_id == first["job_id"]))} \
                == {frame}
            assert {i.artifact_id for i in s.exec(select(JobInput).where(JobInput.job_id == second["job_id"]))} \
                == {first["outputs"]["upscaled"]}
            assert run["outputs"] == {"result": second["outputs"]["upscaled"]}
            assert {s.get(Job, st["job_id"]).batch_item for st in (first, second)} == {item}
    assert [a["id"] for a in done["outputs"]] == [r["outputs"]["result"] for r in runs]  # final outputs only


def test_one_bad_input_refuses_the_whole_batch_naming_the_item(api: Api) -> None:
    good = upload(api, (1, 2, 3))
    r = api.client.post("/v1/batches", headers=api.run, json={"pipeline": "twice", "inputs": [good, "nope"]})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [(e["item"], e["param"]) for e in errors] == [(1, "inputs.frame")], errors
    assert "unknown artifact" in errors[0]["message"] and "items 1" in r.json()["detail"]
    r = api.client.post("/v1/batches", headers=api.run,  # a value the first step's template refuses
                        json={"pipeline": "twice", "inputs": [good], "params": {"first": {"resize": 9.0}}})
    assert r.status_code == 422 and r.json()["errors"][0]["item"] == 0, r.text
    assert r.json()["errors"][0]["param"].startswith("steps.first"), r.text
    r = api.client.post("/v1/batches", headers=api.run, json={"pipeline": "twice", "inputs": [good],
                                                              "input_param": "nothing"})
    assert r.status_code == 422, r.text
    with api.client.app.state.ctx.db.session() as s:  # nothing was written by a refused batch
        assert list(s.exec(select(Job))) == [] and list(s.exec(select(PipelineRun))) == []
        assert list(s.exec(select(Batch))) == []


def test_cancel_the_batch_mid_way_cancels_its_runs(api: Api) -> None:
    frames = [upload(api, (9, 200, 9)), upload(api, (200, 9, 200))]
    batch = create(api, {"pipeline": "twice", "inputs": frames})
    r = api.client.post(f"/v1/batches/{batch['id']}/cancel", headers=api.run)
    assert r.status_code == 200, r.text
    done = wait(api, batch["id"])
    runs = [wait_run(api, r["id"]) for r in runs_of(api, batch["id"])]
    assert [r["state"] for r in runs] == ["CANCELLED", "CANCELLED"], runs
    assert done["counts"] == {"CANCELLED": 2}, done
    for run in runs:
        assert steps(run)["second"]["state"] == "CANCELLED" and steps(run)["second"]["job_id"] is None
    with api.client.app.state.ctx.db.session() as s:
        assert len(list(s.exec(select(Job)))) == 2  # only the first steps' jobs were ever written
    assert api.client.post(f"/v1/batches/{batch['id']}/cancel", headers=api.run).status_code == 409
    r = api.client.post(f"/v1/batches/{batch['id']}/retry", headers=api.run)  # its runs resume, not its jobs
    assert r.status_code == 409 and "resume" in r.text, r.text


def test_the_cli_runs_a_folder_through_a_pipeline(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``medialab batch run --pipeline twice FOLDER --set second.resize=0.5 --out OUT`` over HTTP (the service
    in this process, through the test client's transport): the runs' final outputs downloaded, one each."""
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from orchestrator.cli import batch as cli
    from orchestrator.cli.main import app
    from orchestrator.cli.remote import Remote
    from tests.conftest import png_bytes

    def connect(cls: type[Remote], settings: Settings, profile: str | None = None) -> Remote:
        remote = Remote("http://testserver", None)
        remote.client = TestClient(api.client.app, headers=api.admin)  # run and export (the downloads)
        return remote

    monkeypatch.setattr(cli.Remote, "connect", classmethod(connect))
    monkeypatch.setattr(cli, "POLL_S", 0.2)
    shots, out = tmp_path / "shots", tmp_path / "out"
    shots.mkdir()
    (shots / "a.png").write_bytes(png_bytes(color=(11, 22, 33)))
    (shots / "b.png").write_bytes(png_bytes(color=(33, 22, 11)))
    r = CliRunner().invoke(app, ["batch", "run", "--pipeline", "twice", str(shots), "--set", "second.resize=0.5",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 run(s) of pipeline 'twice'" in r.output and "2 SUCCEEDED" in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a__upscaled.png", "b__upscaled.png", "manifest.jsonl"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with api.client.app.state.ctx.db.session() as s:
        runs = list(s.exec(select(PipelineRun).order_by(PipelineRun.batch_item)))
        assert [r.params for r in runs] == [{"second": {"resize": 0.5}}] * 2
        assert [ln["artifact"] for ln in lines] == [r.outputs["result"] for r in runs]
    assert [Path(ln["input"]).name for ln in lines] == ["a.png", "b.png"]
    r = CliRunner().invoke(app, ["batch", "run", "--pipeline", "twice", str(shots), "--set", "resize=0.5"])
    assert r.exit_code == 1 and "step.param" in r.output, r.output
