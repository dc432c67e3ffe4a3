"""Pipeline runs end to end on real ComfyUI servers: a two-step ESRGAN chain (core templates, the fixture
model) to SUCCEEDED with lineage across it, a rerun reusing step 1 (no ComfyUI prompt for it), a step 2 that
fails (its model is on no server) resumed after the model is added, cancel mid-chain, bad inputs refused."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from orchestrator.db.tables import Attempt, Job, JobInput
from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, MODELS, png_bytes, start_workers
from tests.integration.conftest import Api, make_api

SECOND_MODEL = "tiny_x4_second.safetensors"  # on no server until the resume test adds it


def chain(second_model: str = FIXTURE_MODEL) -> dict[str, Any]:
    """upscale-esrgan x4 with resize 0.25 twice: each step keeps the size, so the chain is cheap on the CPU."""
    def step(sid: str, image: dict[str, str], model: str) -> dict[str, Any]:
        return {"id": sid, "template": "upscale-esrgan", "version": 2,
                "params": {"image": image, "model": model, "resize": 0.25}}
    return {"name": "twice", "version": 1, "description": "upscale, then upscale the result",
            "inputs": [{"name": "frame", "type": "image"}],
            "steps": [step("first", {"input": "frame"}, FIXTURE_MODEL),
                      step("second", {"step": "first", "output": "upscaled"}, second_model)],
            "outputs": [{"name": "result", "step": "second", "output": "upscaled"}]}


def pipelines_dir(root: Path, definition: dict[str, Any]) -> Path:
    folder = root / "pipelines" / definition["name"] / "v1"
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps(definition))
    return root / "pipelines"


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, settings: Settings, comfy_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API with a dispatcher on one real ComfyUI server, on each database, with the test chain."""
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("pg_url")
    settings.comfy_servers = [comfy_url]
    settings.pipelines_dir = pipelines_dir(tmp_path, chain())
    with make_api(settings, dispatch=True) as api:
        yield api


def upload(api: Api, color: tuple[int, int, int] = (200, 40, 40)) -> str:
    r = api.client.post("/v1/artifacts", headers=api.run, files={"file": ("f.png", png_bytes(color=color))})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def start(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/v1/pipelines/twice/runs", headers=api.run, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait(api: Api, run_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.client.get(f"/v1/pipeline-runs/{run_id[:8]}", headers=api.reader).json()
        if run["state"] != "RUNNING":
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still RUNNING after {timeout}s: {run}")


def prompts(url: str) -> int:
    return len(httpx.get(f"{url}/history", params={"max_items": 10000}, timeout=10).json())


def steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in run["steps"]}


def test_chain_succeeds_with_lineage_then_a_rerun_reuses_step_one(api: Api, comfy_url: str) -> None:
    frame = upload(api)
    run = wait(api, start(api, {"inputs": {"frame": frame}})["id"])
    assert run["state"] == "SUCCEEDED", run
    first, second = steps(run)["first"], steps(run)["second"]
    assert first["state"] == second["state"] == "SUCCEEDED" and first["reused_from_job"] is None
    assert second["params"]["image"] == first["outputs"]["upscaled"]  # step 2 read step 1's output
    assert run["outputs"] == {"result": second["outputs"]["upscaled"]}
    with api.client.app.state.ctx.db.session() as s:  # lineage: job_inputs chain frame -> first -> second
        assert {i.artifact_id for i in s.exec(select(JobInput).where(JobInput.job_id == first["job_id"]))} == {frame}
        assert {i.artifact_id for i in s.exec(select(JobInput).where(JobInput.job_id == second["job_id"]))} == {
            first["outputs"]["upscaled"]}
    made = api.client.get("/v1/artifacts", headers=api.reader, params={"made_from": first["outputs"]["upscaled"]})
    assert run["outputs"]["result"] in [a["id"] for a in made.json()], made.text
    final = api.client.get(f"/v1/artifacts/{run['outputs']['result']}", headers=api.reader).json()
    assert final["job_id"] == second["job_id"]

    # the same inputs, step 2 with another resize: step 1 is REUSED (no prompt), step 2 runs (one prompt)
    before = prompts(comfy_url)
    again = wait(api, start(api, {"inputs": {"frame": frame}, "params": {"second": {"resize": 0.5}}})["id"])
    assert again["state"] == "SUCCEEDED", again
    a1, a2 = steps(again)["first"], steps(again)["second"]
    assert (a1["state"], a1["job_id"], a1["reused_from_job"]) == ("REUSED", None, first["job_id"])
    assert a1["outputs"] == first["outputs"]
    assert a2["state"] == "SUCCEEDED" and a2["job_id"] != second["job_id"] and a2["params"]["resize"] == 0.5
    assert prompts(comfy_url) == before + 1

    # reuse off: both steps run again
    off = wait(api, start(api, {"inputs": {"frame": frame}, "reuse": False})["id"])
    assert [s["state"] for s in off["steps"]] == ["SUCCEEDED", "SUCCEEDED"], off
    assert prompts(comfy_url) == before + 3
    listed = api.client.get("/v1/pipeline-runs", headers=api.reader, params={"pipeline": "twice"}).json()
    assert {r["id"] for r in listed} == {run["id"], again["id"], off["id"]}


def test_cancel_mid_chain_never_submits_step_two(api: Api) -> None:
    frame = upload(api, (10, 200, 30))  # new bytes: nothing to reuse
    run = start(api, {"inputs": {"frame": frame}})
    assert steps(run)["first"]["state"] in ("QUEUED", "RUNNING") and steps(run)["second"]["state"] == "WAITING"
    r = api.client.post(f"/v1/pipeline-runs/{run['id']}/cancel", headers=api.run)
    assert r.status_code == 200, r.text
    assert steps(r.json())["second"]["state"] == "CANCELLED"
    done = wait(api, run["id"])
    assert done["state"] == "CANCELLED", done
    assert steps(done)["second"]["job_id"] is None and steps(done)["second"]["state"] == "CANCELLED"
    with api.client.app.state.ctx.db.session() as s:
        assert len(list(s.exec(select(Job)))) == 1  # only step 1's job was ever written
    assert api.client.post(f"/v1/pipeline-runs/{run['id']}/cancel", headers=api.run).status_code == 409


def test_bad_inputs_are_refused_each_named(api: Api) -> None:
    r = api.client.post("/v1/pipelines/twice/runs", headers=api.run,
                        json={"inputs": {"frame": "nope", "extra": 1},
                              "params": {"bogus": {"resize": 1}, "second": {"image": "x", "nothing": 2}}})
    assert r.status_code == 422, r.text
    named = {e["param"]: e["message"] for e in r.json()["errors"]}
    assert set(named) == {"inputs.frame", "inputs.extra", "params.bogus", "params.second.image",
                          "params.second.nothing"}, named
    assert "unknown artifact" in named["inputs.frame"]
    r = api.client.post("/v1/pipelines/twice/runs", headers=api.run, json={"inputs": {}})
    assert r.status_code == 422 and r.json()["errors"][0]["param"] == "inputs.frame"
    r = api.client.post("/v1/pipelines/twice/runs", headers=api.run,  # a value the template refuses
                        json={"inputs": {"frame": upload(api)}, "params": {"first": {"resize": 9.0}}})
    assert r.status_code == 422 and r.json()["errors"][0]["param"].startswith("steps.first"), r.text
    assert api.client.post("/v1/pipelines/nope/runs", headers=api.run, json={}).status_code == 404
    with api.client.app.state.ctx.db.session() as s:
        assert list(s.exec(select(Job))) == []  # nothing was written by a refused start
    assert api.client.get("/v1/pipeline-runs", headers=api.reader).json() == []


def test_a_failed_second_step_resumes_after_the_fix_without_rerunning_step_one(
        settings: Settings, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    shutil.copy(MODELS / "upscale_models" / FIXTURE_MODEL, models / "upscale_models" / FIXTURE_MODEL)
    worker = start_workers(tmp_path_factory, 1, models=models)[0]
    try:
        settings.comfy_servers = [worker.url]
        settings.pipelines_dir = pipelines_dir(tmp_path, chain(second_model=SECOND_MODEL))
        with make_api(settings, dispatch=True) as api:
            frame = upload(api)
            run = wait(api, start(api, {"inputs": {"frame": frame}})["id"])
            assert run["state"] == "FAILED", run
            first, second = steps(run)["first"], steps(run)["second"]
            assert first["state"] == "SUCCEEDED" and second["state"] == "FAILED"
            assert SECOND_MODEL in second["error"]["message"], second
            assert run["error"]["step"] == "second"

            # the fix: the model file on the server, its capabilities read again
            shutil.copy(models / "upscale_models" / FIXTURE_MODEL, models / "upscale_models" / SECOND_MODEL)
            servers = api.client.get("/v1/servers", headers=api.admin).json()
            r = api.client.post(f"/v1/servers/{servers[0]['name']}/refresh", headers=api.admin)
            assert r.status_code == 200, r.text
            r = api.client.post(f"/v1/pipeline-runs/{run['id'][:8]}/resume", headers=api.run)
            assert r.status_code == 200, r.text
            done = wait(api, run["id"])
            assert done["state"] == "SUCCEEDED", done
            d1, d2 = steps(done)["first"], steps(done)["second"]
            assert d1 == first  # kept as it was: same job, same outputs
            assert d2["state"] == "SUCCEEDED" and d2["params"]["image"] == first["outputs"]["upscaled"]
            with api.client.app.state.ctx.db.session() as s:
                assert len(list(s.exec(select(Attempt).where(Attempt.job_id == first["job_id"])))) == 1
                assert len(list(s.exec(select(Job)))) == 2  # step 1's job and step 2's, nothing again
            assert api.client.post(f"/v1/pipeline-runs/{run['id']}/resume", headers=api.run).status_code == 409
    finally:
        worker.stop()


def test_the_cli_runs_watches_lists_and_shows_a_run(api: Api, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``medialab pipelines run --input frame=FILE --set step.param=value --watch`` over HTTP (the service in
    this process, through the test client's transport), then ``runs`` and ``show-run``."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from orchestrator.cli import pipelines as cli
    from orchestrator.cli.main import app
    from orchestrator.cli.remote import Remote

    def connect(cls: type[Remote], settings: Settings, profile: str | None = None) -> Remote:
        remote = Remote("http://testserver", None)
        remote.client = TestClient(api.client.app, headers=api.run)  # the running app; its lifespan is api's
        return remote

    monkeypatch.setattr(cli.Remote, "connect", classmethod(connect))
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(color=(90, 90, 250)))
    runner = CliRunner()
    r = runner.invoke(app, ["pipelines", "run", "twice", "--input", f"frame={frame}", "--set", "second.resize=0.5",
                            "--watch", "--json"])
    assert r.exit_code == 0, r.output
    run = json.loads(r.output[r.output.index("{"):])
    assert run["state"] == "SUCCEEDED" and steps(run)["second"]["params"]["resize"] == 0.5
    r = runner.invoke(app, ["pipelines", "runs", "--pipeline", "twice"])
    assert r.exit_code == 0 and run["id"][:12] in r.output, r.output
    r = runner.invoke(app, ["pipelines", "show-run", run["id"][:8]])
    assert r.exit_code == 0 and "SUCCEEDED" in r.output and run["outputs"]["result"] in r.output, r.output
    r = runner.invoke(app, ["pipelines", "run", "twice", "--input", "frame=nope"])
    assert r.exit_code == 1 and "inputs.frame" in r.output, r.output
