"""``medialab servers add --kind ...``, ``servers set``, ``servers list``, ``burst`` and ``jobs show`` with costs,
as a user runs them (subprocesses on one home; the provider's URL answers nothing, so it is only shown)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.core.states import JobState
from orchestrator.db.engine import Database
from orchestrator.db.tables import Attempt, Job
from tests.integration.test_cli import medialab
from tests.integration.test_cli_remote import medialab as medialab_client
from tests.integration.test_cli_remote import served


def test_a_provider_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / ".medialab"
    info = tmp_path / "object_info.json"
    info.write_text(json.dumps({"LoadImage": {"input": {"required": {}}}, "SaveImage": {"input": {"required": {}}}}))
    r = medialab(home, "servers", "add", "http://127.0.0.1:9/", "--name", "cloud", "--kind", "comfy_api_v2",
                 "--tier", "1", "--cost-per-gpu-s", "0.0005", "--cold-start-s", "15", "--max-inflight", "4",
                 "--object-info", str(info), "--model", "checkpoints/sd15.safetensors")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "server cloud" in r.stdout and "comfy_api_v2, tier 1, 0.0005/GPU-s" in r.stdout
    assert "not reachable now" in r.stdout  # asked its health only

    bad = medialab(home, "servers", "add", "http://127.0.0.1:9/other", "--kind", "runpod", "--tier", "1")
    assert bad.returncode == 1 and "cannot be probed" in bad.stderr and "node classes" in bad.stderr
    bad = medialab(home, "servers", "add", "http://127.0.0.1:9/x", "--kind", "runpod", "--tier", "12",
                   "--node-class", "SaveImage")
    assert bad.returncode == 1 and "tier 12" in bad.stderr
    bad = medialab(home, "servers", "add", "http://127.0.0.1:9/x", "--kind", "runpod", "--node-class", "A",
                   "--model", "nofolder")
    assert bad.returncode == 1 and "folder/file" in bad.stderr

    r = medialab(home, "servers", "set", "cloud", "--tier", "2", "--cost-per-gpu-s", "0.001", "--node-class",
                 "LoadImage", "--node-class", "SaveImage", "--node-class", "ImageScaleBy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "server cloud: comfy_api_v2 t2, 0.001/GPU-s max 4; capabilities declared" in r.stdout
    assert medialab(home, "servers", "set", "cloud").returncode == 1  # nothing to change

    listed = medialab(home, "servers", "list", "--json")
    [cloud] = json.loads(listed.stdout)
    assert (cloud["kind"], cloud["tier"], cloud["cost_per_gpu_s"], cloud["cold_start_s"], cloud["max_inflight"],
            cloud["node_classes"]) == ("comfy_api_v2", 2, 0.001, 15.0, 4, 3)
    table = medialab(home, "servers", "list")
    assert "comfy_api_v2 t2" in table.stdout and "0.001/GPU-s max 4" in table.stdout

    db = Database(f"sqlite:///{(home / 'medialab.db').resolve()}")
    with db.session() as s:
        job = Job(template="scale-by", version=1, params={}, state=JobState.SUCCEEDED)
        s.add(job)
        s.flush()
        s.add(Attempt(job_id=job.id, number=1, server="http://127.0.0.1:9", state=JobState.SUCCEEDED, tier=2,
                      rate=0.001, cost=0.12, gpu_s=120.0, remote_id="prov-7"))
        s.commit()
        job_id = job.id
    db.engine.dispose()

    created = medialab(home, "keys", "create", "--role", "run", "--name", "op")
    key = re.search(r"(mlk_\S+)", created.stdout).group(1)
    with served(home, "--no-dispatch", env={"MEDIALAB_BURST_TEMPLATES": '["upscale-esrgan@v2"]',
                                            "MEDIALAB_BURST_BUDGET_DAY": "5"}) as url:
        env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
        status = medialab_client(home, "burst", env=env)  # the service's policy and caps, not this process's
        assert status.returncode == 0, status.stdout + status.stderr
        assert "templates that may burst: upscale-esrgan@v2" in status.stdout
        assert "no cap" in status.stdout and "0.1200" in status.stdout and "4.8800" in status.stdout
        row = next(line for line in status.stdout.splitlines() if "cloud" in line)
        assert "comfy_api_v2" in row and "0/4" in row and "down" in row and "15s" in row
        as_json = json.loads(medialab_client(home, "burst", "--json", env=env).stdout)
        assert as_json["budgets"]["day"] == {"cap": 5.0, "spent": 0.12, "left": 4.88}
        assert as_json["servers"][0]["jobs_day"] == 1

    shown = json.loads(medialab(home, "jobs", "show", job_id).stdout)
    assert shown["cost"] == 0.12
    assert [(a["cost"], a["remote_id"]) for a in shown["attempts"]] == [(0.12, "prov-7")]
    shown = json.loads(medialab(home, "jobs", "show", job_id, "--json").stdout)
    assert shown["cost"] == 0.12 and shown["attempts"][0]["remote_id"] == "prov-7"
