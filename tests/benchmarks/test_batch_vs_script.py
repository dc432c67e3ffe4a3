"""Issue 13's batch-vs-direct-script benchmark at a tiny size: both sides run end to end on a real ComfyUI and a
real ``medialab serve``, and produce their outputs and figures (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FIXTURE_MODEL, MODELS, RUNTIME


@pytest.mark.comfy
def test_batch_vs_script_runs_both_sides_to_their_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    from benchmarks import batch_vs_script

    res = batch_vs_script.main(["--images", "3", "--size", "32", "--repeat", "2", "--json", str(tmp_path / "r.json")])
    assert len(res["runs"]) == len(res["ratios"]) == res["verdict"]["samples"] == 2
    assert [r["service_first"] for r in res["runs"]] == [False, True]  # the side that goes first alternates
    a, b = res["direct"], res["service"]
    assert a["outputs"] == b["outputs"] == b["manifest_lines"] == b["succeeded"] == 3
    assert a["wall_s"] > 0 and b["wall_s"] > 0 and res["ratio"] == a["wall_s"] / b["wall_s"]
    for side in (a, b):  # every prompt was seen in ComfyUI's history, inside the timed window
        c = side["comfy"]
        assert 0 < c["exec_s"] < side["wall_s"] and 0 <= c["first_start_s"] < c["last_end_s"] <= side["wall_s"]
    assert b["created_after_s"] > 0 and b["cpu_s"]["service"] > 0 and b["cpu_s"]["cli"] > 0
    assert (tmp_path / "r.json").is_file()
    out = capsys.readouterr().out
    assert "ratio direct/batch" in out and res["verdict_line"] in out and ">= 1.200x" in out
