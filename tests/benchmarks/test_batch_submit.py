"""Benchmark 7 (batch submit) at a tiny size: it still runs end to end and prints its verdicts (no timing
asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import batch_submit
from benchmarks.verdict import MET, NOISY, NOT_MET


def test_batch_submit_judges_the_request_times_on_each_database(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    res = batch_submit.main(["--items", "40", "--repeat", "3", "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(res))
    sqlite = res["runs"]["sqlite"]
    assert len(sqlite["batch_s"]) == len(sqlite["api_s"]) == 3 and sqlite["single_s"] > 0
    for run in res["runs"].values():
        assert set(run["verdicts"]) == {"use_case", "api"}
        for v in run["verdicts"].values():
            assert v["samples"] == 3 and v["target"] == 2.0 and v["unit"] == "s" and not v["higher_is_better"]
            assert v["outcome"] in (MET, NOT_MET, NOISY)
    assert "40 items, not 10,000" in out and "[for information: the target is on PostgreSQL]" in out
    if "postgresql" not in res["runs"]:
        assert "PostgreSQL skipped" in out and res["verdict"] is None
    else:
        assert res["verdict"] == res["runs"]["postgresql"]["verdicts"]["api"]["outcome"]


def test_one_batch_is_said_to_be_a_single_sample(capsys: pytest.CaptureFixture[str]) -> None:
    res = batch_submit.main(["--items", "10", "--db", "sqlite", "--no-single", "--no-api"])
    out = capsys.readouterr().out
    assert "one batch: a single sample" in out and res["verdict"] is None
    assert res["runs"]["sqlite"]["verdicts"]["use_case"]["samples"] == 1
