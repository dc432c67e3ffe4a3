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
def test_overhead_compares_the_direct_client_with_the_api(tmp_path: Path) -> None:
    from benchmarks import overhead

    res = overhead.main(["--jobs", "2", "--json", str(tmp_path / "o.json")])
    assert json.loads((tmp_path / "o.json").read_text()) == json.loads(json.dumps(res))
    assert res["jobs"] == 2 and len(res["raw_ms"]["direct"]) == len(res["raw_ms"]["orchestrator"]) == 2
    for path in ("direct", "orchestrator"):
        for total, exec_ms in res["raw_ms"][path]:
            assert total > exec_ms > 0  # a job's wall time holds ComfyUI's execution and the path's own work
        assert res[f"{path}_ms"]["p95"] >= res[f"{path}_ms"]["p50"] > 0
        assert res[f"{path}_own_ms"]["p50"] > 0
    assert res["ratio_p50"] > 0 and isinstance(res["met"], bool)
    assert res["added_ms_p50"] == pytest.approx(res["orchestrator_ms"]["p50"] - res["direct_ms"]["p50"])


@pytest.mark.comfy
def test_ingest_memory_measures_both_ways_into_both_stores_and_both_byte_paths(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the upload client of benchmark 5)")
    pytest.importorskip("moto", reason="moto[server] (the dev extra) is the S3 server of benchmark 5")
    from benchmarks import ingest_memory

    res = ingest_memory.main(["--mb", "4", "--json", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == res
    ways = {(r["way"].split()[0], r["store"]) for r in res["ingest"]}
    assert ways == {(w, s) for w in ("ComfyUI", "client") for s in ("local disk", "S3 (moto)")}
    for r in res["ingest"]:
        assert r["mib"] == 4 and r["seconds"] > 0 and r["idle_rss_mib"] > 0 and r["peak_above_idle_mib"] >= 0
    by = {r["byte_path"]: r for r in res["byte_paths"]}
    assert by["through"]["state"] == by["direct"]["state"] == "SUCCEEDED"
    assert by["through"]["through_orchestrator_bytes"] == by["through"]["media_bytes"] > 0
    assert by["direct"]["through_orchestrator_bytes"] == 0
