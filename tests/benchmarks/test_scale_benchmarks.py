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


def test_submit_throughput_from_client_processes_against_serve_workers(capsys: pytest.CaptureFixture[str]) -> None:
    runs = submit_throughput.main(["--workers", "1,2", "--clients", "2", "--seconds", "3", "--servers", "2"])
    if not runs:
        assert "PostgreSQL skipped" in capsys.readouterr().out  # said, with the reason
        return
    assert [(r.workers, r.clients) for r in runs] == [(1, 2), (2, 2)]
    for r in runs:
        assert r.accepted > 0 and r.errors == 0 and r.submits_per_s > 0 and r.p99_ms >= r.p50_ms > 0
        assert len(r.windows) == 1  # the steady part of 3 s: the first and the last second left out
    assert "against >= 1000 submits/s" in capsys.readouterr().out  # the target, judged


@pytest.mark.comfy
def test_pool_throughput_on_one_and_two_real_servers() -> None:
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    one, two = pool_throughput.main(["--jobs", "4", "--size", "64", "--timeout", "120"])
    assert (one.servers, two.servers) == (1, 2)
    assert one.succeeded == two.succeeded == 4 and one.jobs_per_min > 0 and two.jobs_per_min > 0
    assert len(one.per_server) == 1 and sum(two.per_server.values()) == 4
