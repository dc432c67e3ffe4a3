"""`medialab batch` as an API client: a service (`medialab serve`) in another process, the CLI in a third one
with its own (empty) MEDIALAB_HOME: a folder x a grid to SUCCEEDED with its outputs and manifest, the same
command again skipping everything, a dry run writing nothing, a CSV manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.test_cli_remote import medialab, served, service_with_key


def test_batch_run_from_a_folder_and_a_grid_dry_run_and_a_csv_manifest(tmp_path: Path, comfy_url: str) -> None:
    home, key = service_with_key(tmp_path, "run", "export")
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "a.png").write_bytes(png_bytes(32, 24, (1, 2, 3)))
    (shots / "b.png").write_bytes(png_bytes(40, 24, (4, 5, 6)))
    out = tmp_path / "out"
    command = ["batch", "run", "upscale-esrgan", str(shots), "--set", f"model={FIXTURE_MODEL}",
               "--grid", "resize=0.5,1", "--out", str(out)]
    with served(home, env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
        headers = {"X-API-Key": key}

        dry = medialab(operator, *command[:-2], "--dry-run", env=env)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run: 4 job(s) of 'upscale-esrgan'" in dry.stdout and "nothing was uploaded or queued" in dry.stdout
        assert httpx.get(f"{url}/v1/batches", headers=headers).json() == []
        assert httpx.get(f"{url}/v1/artifacts", headers=headers).json() == []

        r = medialab(operator, *command, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        batch = re.search(rf"batch (\w{{32}}) on {url}: 4 job\(s\) queued, 0 already done", r.stdout).group(1)
        shown = httpx.get(f"{url}/v1/batches/{batch}", headers=headers).json()
        assert shown["counts"] == {"SUCCEEDED": 4}
        files = sorted(p.name for p in out.iterdir() if p.name != "manifest.jsonl")
        assert set(files) == {f"{s}__resize-{r}__upscaled.png" for s in "ab" for r in ("0.5", "1")}, files
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert len(lines) == 4 and {ln["state"] for ln in lines} == {"SUCCEEDED"}
        assert {ln["params"]["resize"] for ln in lines} == {0.5, 1}
        assert all(ln["outputs"][0]["sha256"] and ln["version"] for ln in lines)
        assert f"manifest: {(out / 'manifest.jsonl').resolve()}" in r.stdout

        again = medialab(operator, *command, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 job(s) queued, 4 already done (skipped)" in again.stdout
        assert len((out / "manifest.jsonl").read_text().splitlines()) == 4  # nothing downloaded twice
        jobs = httpx.get(f"{url}/v1/jobs", headers=headers, params={"limit": 100}).json()
        assert len(jobs) == 4

        again_dry = medialab(operator, *command[:-2], "--dry-run", env=env)
        assert "dry run: 4 job(s) of 'upscale-esrgan' (4 already done)" in again_dry.stdout, again_dry.stdout
        bad = medialab(operator, "batch", "run", "upscale-esrgan", str(shots), "--set", "model=missing.pth",
                       "--dry-run", env=env)
        assert bad.returncode == 1 and "missing.pth" in bad.stderr, bad.stdout + bad.stderr
        assert len(httpx.get(f"{url}/v1/batches", headers=headers).json()) == 1  # the rerun wrote no batch

        listed = medialab(operator, "batch", "list", "--json", env=env)
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1
        assert medialab(operator, "batch", "show", batch[:8], env=env).returncode == 0

        csv = tmp_path / "jobs.csv"
        csv.write_text(f"image,model,resize\n{shots / 'a.png'},{FIXTURE_MODEL},0.25\n"
                       f"{shots / 'b.png'},{FIXTURE_MODEL},0.25\n")
        m = medialab(operator, "batch", "run", "upscale-esrgan", "--manifest", str(csv), "--out",
                     str(tmp_path / "out2"), env=env)
        assert m.returncode == 0, m.stdout + m.stderr
        assert "2 job(s) queued" in m.stdout
        assert len((tmp_path / "out2" / "manifest.jsonl").read_text().splitlines()) == 2
