"""Benchmarks 2-4 at a tiny size: they still run end to end and produce their figures (no timing asserted)."""

from __future__ import annotations

import pytest

from benchmarks import pool_throughput, scheduling, submit_throughput
from tests.conftest import FIXTURE_MODEL, MODELS, RUNTIME


def test_scheduling_on_a_simulated_pool_compares_affinity_with_round_robin() -> None:
    results = scheduling.main(["--servers", "3", "--jobs", "12", "--models", "3", "--time-scale", "10"])
    assert [r.mode for r in results] == ["affinity", "round_robin"]
    for r in results:
        assert r.succeeded == r.jobs == r.placements == 12  # every job ran once, on a simulated server
        assert 0 < r.utilization <= 1.0 and r.makespan_s >= r.lower_bound_s > 0
        assert r.loads >= 0 and r.placement_cpu_us > 0 and r.dispatch_cpu_us > 0


def test_submit_throughput_over_http_on_sqlite_and_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    runs = submit_throughput.main(["--jobs", "30", "--clients", "3", "--servers", "2"])
    by = {r.database: r for r in runs}
    assert by["sqlite"].accepted == 30 and by["sqlite"].errors == 0 and by["sqlite"].jobs_per_s > 0
    assert by["sqlite"].p99_ms >= by["sqlite"].p50_ms > 0
    if "postgresql" not in by:
        assert "PostgreSQL skipped" in capsys.readouterr().out  # said, with the reason
    else:
        assert by["postgresql"].accepted == 30 and by["postgresql"].errors == 0


@pytest.mark.comfy
def test_pool_throughput_on_one_and_two_real_servers() -> None:
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    one, two = pool_throughput.main(["--jobs", "4", "--size", "64", "--timeout", "120"])
    assert (one.servers, two.servers) == (1, 2)
    assert one.succeeded == two.succeeded == 4 and one.jobs_per_min > 0 and two.jobs_per_min > 0
    assert len(one.per_server) == 1 and sum(two.per_server.values()) == 4
