"""Two dispatcher processes sharing one queue on PostgreSQL, against simulated ComfyUI servers (``benchmarks/sim``:
real HTTP + websocket protocol): every job runs exactly once (one attempt, one prompt on one server), none is lost,
and both replicas take part."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlmodel import select

from benchmarks import scheduling
from benchmarks.sim import workload as wl
from benchmarks.sim.pool import SimPool
from orchestrator.bootstrap import Context
from orchestrator.core.states import JobState
from orchestrator.db.tables import Attempt, Job
from orchestrator.settings import Settings

SERVERS, JOBS, MODELS = 60, 400, 3  # more free slots than one round's batch (100): both replicas place at once


def test_two_dispatcher_processes_share_the_queue_and_run_every_job_once(pg_url: str, tmp_path: Path) -> None:
    models = wl.models(MODELS, seed=3)
    work = wl.jobs(JOBS, MODELS, seed=3)
    with SimPool(SERVERS, models, 0.01, tmp_path / "sim") as pool:
        settings = Settings(home=tmp_path / "home", templates_dir=wl.write_template(tmp_path / "templates"),
                            comfy_servers=pool.urls, database_url=pg_url, event_timeout_s=30.0)
        ctx = Context(settings)
        procs = []
        try:
            scheduling.submit_all(ctx, work)
            procs = scheduling.start_replicas(settings, 2, settings.home)
            for p in procs:  # both begin together
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            deadline = time.monotonic() + 300
            while scheduling.count_done(ctx)[0] < JOBS:
                assert all(p.poll() is None for p in procs), "a dispatcher replica stopped"
                assert time.monotonic() < deadline, f"{scheduling.count_done(ctx)} of {JOBS} done"
                time.sleep(0.25)
        finally:
            scheduling.stop_replicas(procs)
        stats = pool.stats()
        with ctx.db.session() as s:
            states = Counter(s.exec(select(Job.state)).all())
            attempts = s.exec(select(Attempt)).all()
        ctx.close()
    assert states == {JobState.SUCCEEDED: JOBS}  # none lost, none failed
    assert len(attempts) == JOBS and len({a.job_id for a in attempts}) == JOBS  # one attempt per job
    assert sum(s["jobs"] for s in stats) == JOBS  # and one prompt per job on the servers
    assert max_overlap(attempts) <= settings.max_inflight  # rounds hold a lock: no slot is filled twice
    owners = Counter(a.owner.split("-")[0] for a in attempts if a.owner)
    assert set(owners) == {"replica0", "replica1"}, owners  # both replicas dispatched
    print("attempts per replica:", dict(owners))


def max_overlap(attempts: list[Attempt]) -> int:
    """The most attempts any one server held at once (claimed to finished; an end before a start at a tie)."""
    most = 0
    for server in {a.server for a in attempts}:
        marks = sorted([(a.started_at, 1) for a in attempts if a.server == server]
                       + [(a.finished_at, -1) for a in attempts if a.server == server and a.finished_at])
        held = 0
        for _at, step in marks:
            held += step
            most = max(most, held)
    return most
