"""The DAGGR workbench (orchestrator/workbench, `medialab workbench`) against a real `medialab serve` with a
real ComfyUI: headless through daggr's executor and its HTTP app (a test client), and once in a real browser
(Playwright + Debian chromium) with every host but 127.0.0.1 blocked. Skipped, saying why, without daggr."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image

from orchestrator.comfy.worker import free_port, stop_group
from tests.conftest import FIXTURE_MODEL, MODELS, png_bytes, start_workers
from tests.integration.test_cli_remote import served, service_with_key

if importlib.util.find_spec("daggr") is None:
    pytest.skip("daggr is not installed (pip install -e '.[workbench]')", allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
FRAME = (32, 24)  # the fixture ESRGAN model is x4: 128x96, then 512x384


@dataclass
class Service:
    url: str
    key: str
    frame: Path
    folder: Path  # the workbench's scratchpad (HF_HOME, DAGGR_DB_PATH) for the in-process tests

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on its own ComfyUI whose only upscale model is the x4 fixture: the workbench picks the pool's
    model where the template's default is absent, and the sizes below are those of 4x."""
    models = tmp_path_factory.mktemp("x4-only")
    (models / "upscale_models").mkdir()
    (models / "upscale_models" / FIXTURE_MODEL).symlink_to(MODELS / "upscale_models" / FIXTURE_MODEL)
    (worker,) = start_workers(tmp_path_factory, 1, models=models)
    try:
        yield from _service(tmp_path_factory, worker.url)
    finally:
        worker.stop()


def _service(tmp_path_factory: pytest.TempPathFactory, comfy_url: str) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("workbench")
    home, key = service_with_key(tmp, "run", "export", "publish")
    frame = tmp / "frame.png"
    frame.write_bytes(png_bytes(*FRAME))
    folder = tmp / "scratch"
    with pytest.MonkeyPatch.context() as mp:
        from orchestrator.workbench import offline
        for name, value in offline.offline_env(folder).items():
            mp.setenv(name, value)
        (folder / "hf").mkdir(parents=True)
        with served(home, env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
            yield Service(url, key, frame, folder)


def chain(service: Service, *templates: str) -> tuple[Any, Any, Any, Any]:
    """The steps, the run record, the graph and the client of a template chain (imports daggr lazily)."""
    from orchestrator.cli.remote import Remote
    from orchestrator.workbench import nodes
    from orchestrator.workbench.chain import from_templates

    remote = Remote(service.url, service.key)
    steps = from_templates([remote.template(t) for t in templates])
    runs = nodes.Runs()
    return steps, runs, nodes.build_graph(remote, steps, runs, persist_key=False), remote


def size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_a_chain_runs_as_jobs_with_lineage_and_a_rerun_submits_only_its_node(service: Service) -> None:
    from daggr.executor import SequentialExecutor

    steps, runs, graph, _remote = chain(service, "upscale-esrgan", "upscale-esrgan")
    assert [s.id for s in steps] == ["upscale_esrgan", "upscale_esrgan_2"]
    assert graph.get_connections() == [("upscale_esrgan", "upscaled_artifact", "upscale_esrgan_2", "image")]
    ex = SequentialExecutor(graph)
    t = time.perf_counter()
    res = ex.execute_all({"upscale_esrgan": {"image": str(service.frame)}})
    print(f"chain of two upscales: {time.perf_counter() - t:.2f}s")
    first, second = res["upscale_esrgan"], res["upscale_esrgan_2"]
    assert size(first["upscaled"]) == (128, 96) and size(second["upscaled"]) == (512, 384)
    assert runs.jobs["upscale_esrgan"] and len(runs.jobs["upscale_esrgan_2"]) == 1

    with service.api() as api:
        job1 = api.get(f"/v1/jobs/{runs.jobs['upscale_esrgan'][0]}").json()
        job2 = api.get(f"/v1/jobs/{runs.jobs['upscale_esrgan_2'][0]}").json()
        assert job1["state"] == job2["state"] == "SUCCEEDED"
        assert [a["id"] for a in job1["outputs"]] == [first["upscaled_artifact"]]
        assert [a["id"] for a in job2["outputs"]] == [second["upscaled_artifact"]]
        assert job1["params"]["model"] == FIXTURE_MODEL  # the model choice is what the pool has
        assert job2["params"]["image"] == first["upscaled_artifact"]  # an artifact id, not a re-upload
        art2 = api.get(f"/v1/artifacts/{second['upscaled_artifact']}").json()
        assert art2["input_artifacts"] == [first["upscaled_artifact"]] and art2["job_id"] == job2["id"]
        uploaded = api.get(f"/v1/artifacts/{job1['params']['image']}").json()
        assert uploaded["role"] == "input" and uploaded["size"] == service.frame.stat().st_size
        before = len(api.get("/v1/jobs", params={"template": "upscale-esrgan", "limit": 500}).json())

        rerun = ex.execute_node("upscale_esrgan_2", {"resize": 0.5, "resize_method": "bicubic"})
        assert size(rerun["upscaled"]) == (256, 192)
        jobs = api.get("/v1/jobs", params={"template": "upscale-esrgan", "limit": 500}).json()
        assert len(jobs) == before + 1  # node 1 was not submitted again
        assert len(runs.jobs["upscale_esrgan"]) == 1 and len(runs.jobs["upscale_esrgan_2"]) == 2
        job3 = api.get(f"/v1/jobs/{runs.jobs['upscale_esrgan_2'][1]}").json()
        assert job3["params"]["image"] == first["upscaled_artifact"]
        assert job3["params"]["resize"] == 0.5 and job3["params"]["resize_method"] == "bicubic"


def test_node_errors_carry_the_services_detail_and_a_deadline_cancels_the_job(service: Service) -> None:
    from daggr.executor import SequentialExecutor

    from orchestrator.workbench import nodes

    steps, runs, graph, remote = chain(service, "upscale-esrgan")
    ex = SequentialExecutor(graph)
    with pytest.raises(RuntimeError, match=r"upscale-esrgan@v2: .*lacks upscale_models/missing\.pth"):
        ex.execute_node("upscale_esrgan", {"image": str(service.frame), "model": "missing.pth"})
    assert "upscale_esrgan" not in runs.jobs  # refused at submit: no job

    quick = nodes.build_graph(remote, steps, runs, persist_key=False, deadline_s=0)  # past at once
    with pytest.raises(RuntimeError, match=r"ran past the workbench's deadline of 0 s: cancelled"):
        SequentialExecutor(quick).execute_node("upscale_esrgan", {"image": str(service.frame), "resize": 0.75})
    job_id = runs.jobs["upscale_esrgan"][0]
    with service.api() as api:
        for _ in range(100):
            job = api.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("CANCELLED", "SUCCEEDED", "FAILED"):
                break
            time.sleep(0.1)
        # the workbench asked for the cancel; a job this small may still finish before ComfyUI is interrupted
        assert job["cancel_requested"] is True and job["state"] in ("CANCELLED", "SUCCEEDED"), job


def test_the_app_serves_offline_and_saves_the_chain_as_a_pipeline(service: Service) -> None:
    from fastapi.testclient import TestClient

    from orchestrator.workbench import server

    steps, runs, graph, remote = chain(service, "upscale-esrgan", "upscale-esrgan")
    client = TestClient(server.make_app(graph, remote, steps, runs))
    page = client.get("/")
    assert page.status_code == 200 and "fonts.googleapis" not in page.text and "/assets/" in page.text
    schema = client.get("/api/schema").json()["subgraphs"][0]
    assert {i["id"] for i in schema["inputs"]} >= {"upscale_esrgan__image", "upscale_esrgan__resize",
                                                   "upscale_esrgan_2__resize"}
    runs.params["upscale_esrgan_2"] = {"image": "ignored", "model": FIXTURE_MODEL, "resize": 0.5}
    saved = client.post("/medialab/save", json={"name": "wb-double-upscale"})
    assert saved.status_code == 201, saved.text
    body = saved.json()
    assert body["name"] == "wb-double-upscale" and body["order"] == ["upscale_esrgan", "upscale_esrgan_2"]
    with service.api() as api:
        shown = api.get(f"/v1/pipelines/wb-double-upscale/versions/{body['version']}").json()
    assert [i["name"] for i in shown["inputs"]] == ["upscale_esrgan_image"]
    by_id = {s["id"]: s for s in shown["steps"]}
    assert by_id["upscale_esrgan_2"]["params"]["image"] == {"step": "upscale_esrgan", "output": "upscaled"}
    assert by_id["upscale_esrgan_2"]["params"]["resize"] == 0.5
    assert by_id["upscale_esrgan"]["params"]["model"] == FIXTURE_MODEL  # the pool's, not the template's default
    again = client.post("/medialab/save", json={"name": "wb-double-upscale"})  # unchanged: the service says so
    assert again.status_code == 409 and f"v{body['version']}" in again.json()["detail"], again.text

    from orchestrator.cli.remote import Remote
    from orchestrator.workbench import nodes
    from orchestrator.workbench.chain import from_pipeline

    opened = remote.request("GET", "/v1/pipelines/wb-double-upscale").json()
    tvs = {sid: remote.template(p["template"], p["version"]) for sid, p in opened["templates"].items()}
    again_steps = from_pipeline(opened, tvs)
    g = nodes.build_graph(Remote(service.url, service.key), again_steps, nodes.Runs(), persist_key=False)
    assert g.get_connections() == [("upscale_esrgan", "upscaled_artifact", "upscale_esrgan_2", "image")]

    # the same version as one node: each run of it is a pipeline run of the service, with a job per step
    from daggr.executor import SequentialExecutor

    whole_runs = nodes.Runs()
    whole = nodes.build_pipeline_graph(remote, opened, again_steps, whole_runs, persist_key=False)
    out = SequentialExecutor(whole).execute_node("wb_double_upscale", {"upscale_esrgan_image": str(service.frame)})
    assert size(out["upscale_esrgan_2_upscaled"]) == (256, 192)  # x4, then x4 with resize 0.5
    run_id = whole_runs.jobs["wb_double_upscale"][0].removeprefix("run:")
    with service.api() as api:
        run = api.get(f"/v1/pipeline-runs/{run_id}").json()
        assert run["state"] == "SUCCEEDED" and run["outputs"] == {"upscale_esrgan_2_upscaled":
                                                                  out["upscale_esrgan_2_upscaled_artifact"]}
        assert [s["step"] for s in run["steps"]] == ["upscale_esrgan", "upscale_esrgan_2"]
        last = api.get(f"/v1/artifacts/{out['upscale_esrgan_2_upscaled_artifact']}").json()
        assert last["input_artifacts"] == [run["steps"][0]["outputs"]["upscaled"]]  # lineage across the run


@pytest.fixture
def workbench(service: Service, tmp_path: Path) -> Iterator[str]:
    """`medialab workbench upscale-esrgan upscale-esrgan` in its own process; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIALAB_", "HF_", "DAGGR_", "GRADIO_"))}
    env.update(MEDIALAB_HOME=str(tmp_path / ".medialab"), MEDIALAB_URL=service.url, MEDIALAB_API_KEY=service.key)
    log = (tmp_path / "workbench.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "workbench", "upscale-esrgan", "upscale-esrgan",
                             "--port", str(port), "--set", f"image={service.frame}"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "workbench.log").read_text()
            assert time.monotonic() < deadline, "the workbench did not start"
            time.sleep(0.3)
        assert f"workbench on {url}" in (tmp_path / "workbench.log").read_text()
        busy = subprocess.run([sys.executable, "-m", "orchestrator", "workbench", "upscale-esrgan", "--port",
                               str(port)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in busy.stderr, busy.stderr
        yield url
    finally:
        stop_group(proc)
        log.close()


def test_in_a_browser_the_page_loads_offline_and_a_node_run_shows_its_output(service: Service,
                                                                               workbench: str) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the PyPI package playwright is not "
                                         "installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (sudo apt-get install chromium)")
    allowed = {urlparse(workbench).netloc, urlparse(service.url).netloc}
    blocked: list[str] = []
    errors: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context()

            def route(r: Any) -> None:
                u = urlparse(r.request.url)
                if u.scheme in ("http", "https", "ws", "wss") and u.netloc not in allowed:
                    blocked.append(r.request.url)
                    r.abort("internetdisconnected")
                else:
                    r.continue_()

            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            t = time.perf_counter()
            page.goto(workbench, wait_until="domcontentloaded")
            page.wait_for_selector(".run-btn", timeout=60_000)
            print(f"run buttons after {time.perf_counter() - t:.2f}s")
            buttons = page.locator(".run-btn")
            assert buttons.count() == 2
            t = time.perf_counter()
            buttons.nth(buttons.count() - 1).click()  # the leaf: runs node 1, then node 2
            page.wait_for_function("() => [...document.images].some(i => i.src.includes('/file/') && "
                                   "i.src.includes('upscale_esrgan_2-') && i.naturalWidth > 0)", timeout=120_000)
            print(f"both nodes' outputs shown after {time.perf_counter() - t:.2f}s")
            src = page.eval_on_selector_all("img", "els => els.map(e => e.src).filter(s => s.includes('/file/'))")
            shown = [s for s in src if "upscale_esrgan_2-" in s]
            assert shown, src
        finally:
            browser.close()
    assert blocked == [] and errors == []
    job_prefix = urlparse(shown[0]).path.rsplit("/", 1)[-1].split("-")[1]
    with service.api() as api:
        jobs = api.get("/v1/jobs", params={"template": "upscale-esrgan", "limit": 500}).json()
        job = api.get(f"/v1/jobs/{next(j['id'] for j in jobs if j['id'].startswith(job_prefix))}").json()
    assert job["state"] == "SUCCEEDED" and job["outputs"][0]["width"] == 512  # node 2 of the chain: 4x of 4x
