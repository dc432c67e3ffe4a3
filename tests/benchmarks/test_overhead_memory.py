"""Benchmarks 1 and 5 at a tiny size: they still run end to end and produce their figures (no timing asserted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_MODEL, MODELS, RUNTIME


@pytest.fixture(autouse=True)
def _needs_comfy() -> None:
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")


@pytest.mark.comfy
def test_overhead_compares_the_direct_client_with_two_serve_processes(tmp_path: Path) -> None:
    from benchmarks import overhead
    from benchmarks.verdict import MET, NOISY, NOT_MET
    from orchestrator.settings import PROJECT_ROOT

    res = overhead.main(["--small", "--timeline", "--compare", str(PROJECT_ROOT), "--json", str(tmp_path / "o.json")])
    assert json.loads((tmp_path / "o.json").read_text()) == json.loads(json.dumps(res))
    assert res["jobs"] == 3 and set(res["raw_ms"]) == {"a", "b", "c"}
    assert {len(v) for v in res["raw_ms"].values()} == {3}
    for path, raw in res["raw_ms"].items():
        for total, exec_ms in raw:
            assert total > exec_ms > 0, path  # a job's wall time holds ComfyUI's execution and the path's own work
        assert res["stats"][path]["total_ms"]["p95"] >= res["stats"][path]["total_ms"]["p50"] > 0
    assert res["code_b"] == res["code_c"] == str(PROJECT_ROOT / "orchestrator")  # serve ran the code asked for
    for pairs in res["pairs"].values():
        assert len(pairs["ratio"]) == len(pairs["own_diff_ms"]) == len(pairs["total_diff_ms"]) == 3
    assert [v["name"].split(" (")[0] for v in res["verdicts"]] == ["end-to-end ratio b/a", "own time added b-a"]
    assert res["overall"] in (MET, NOT_MET, NOISY) and len(res["lines"]) == 2 + len(res["info_verdicts"])
    for path in ("b", "c"):  # every step of the trip was seen, in the order the clock allows
        steps = {s["step"]: s for s in res["timeline"][path]["steps"]}
        assert all(s["n"] == 3 for s in steps.values()), steps
        assert 0 < steps["upload"]["p50_ms"] < steps["exec_start"]["p50_ms"] < steps["exec_end"]["p50_ms"]
        assert steps["exec_end"]["p50_ms"] <= steps["sse"]["p50_ms"] < steps["bytes"]["p50_ms"]


@pytest.mark.comfy
def test_ingest_memory_measures_both_ways_into_both_stores_and_both_byte_paths(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the upload client of benchmark 5)")
    pytest.importorskip("moto", reason="moto[server] (the dev extra) is the S3 server of benchmark 5")
    from benchmarks import ingest_memory
    from benchmarks.verdict import MET, NOISY, NOT_MET

    res = ingest_memory.main(["--mb", "4", "--repeat", "2", "--json", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == res
    ways = {(r["way"].split()[0], r["store"]) for r in res["ingest"]}
    assert ways == {(w, s) for w in ("ComfyUI", "client") for s in ("local disk", "S3 (moto)")}
    for r in res["ingest"]:
        assert r["mib"] == 4 and r["seconds"] > 0 and r["idle_rss_mib"] > 0 and r["peak_above_idle_mib"] >= 0
        assert len(r["samples"]) == r["verdict"]["samples"] == 2 and r["verdict"]["target"] == 64
        assert r["outcome"] == r["verdict"]["outcome"] in (MET, NOT_MET, NOISY)
    assert res["overall"] in (MET, NOT_MET, NOISY)
    by = {r["byte_path"]: r for r in res["byte_paths"]}
    assert by["through"]["state"] == by["direct"]["state"] == "SUCCEEDED"
    assert by["through"]["through_orchestrator_bytes"] == by["through"]["media_bytes"] > 0
    assert by["direct"]["through_orchestrator_bytes"] == 0
