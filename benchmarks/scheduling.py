"""Scheduling at scale: the real dispatcher against a simulated pool of ComfyUI servers.

Usage: python benchmarks/scheduling.py [--servers 100 --jobs 10000 --models 20 --time-scale 100]

The simulated servers (``benchmarks/sim``) run in a process of their own and speak ComfyUI's HTTP and
websocket protocol; each holds one model warm and pays a model's load time to switch. The orchestrator
side is the real one: jobs are validated and written by ``service``, then the real ``Dispatcher``
(placement, fair order, claims in SQLite), ``Pool`` (probes, health, one websocket per server) and
``Executor`` (submit, follow the websocket, ingest the output into the store) run them. The same jobs
run once per placement mode (``MEDIALAB_PLACEMENT``: ``affinity``, the default, and ``round_robin``).

Reported per mode: GPU utilization (busy time, loads included, / (servers x makespan)), makespan
against the lower bound (max(total work / servers, longest job)), model loads, and the scheduler's own
CPU time per decision (``time.thread_time`` around the placement call and around a whole dispatch
round, which includes its database work). ``--time-scale`` is real milliseconds per simulated second.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sim import workload as wl  # noqa: E402
from benchmarks.sim.pool import SimPool  # noqa: E402
from orchestrator.app import admission
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context  # noqa: E402
from orchestrator.core import placement  # noqa: E402
from orchestrator.core.states import JobState  # noqa: E402
from orchestrator.db.tables import Job  # noqa: E402
from orchestrator.runtime import dispatcher as sched  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

TERMINAL = [s for s in JobState if s.terminal]


@dataclass
class CpuMeter:
    """Thread CPU time spent inside a function, and how often it ran."""

    seconds: float = 0.0
    calls: int = 0

    def wrap(self, fn: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.thread_time() - t0
                self.calls += 1
        return timed


@dataclass
class ModeResult:
    mode: str
    servers: int
    jobs: int
    succeeded: int
    makespan_s: float  # simulated seconds
    lower_bound_s: float
    utilization: float
    steady_utilization: float  # until the queue emptied (the last job was dispatched): no tail of stragglers
    work_share: float  # job work / busy time (the rest is model loading)
    loads: int
    placements: int
    placement_cpu_us: float  # per job placed: the placement decision only
    dispatch_cpu_us: float  # per job placed: whole dispatch rounds (database reads, claims, commits)
    submit_s: float  # real seconds to validate and write the jobs
    run_s: float  # real seconds from dispatcher start to the last job done

    @property
    def makespan_ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s


def submit_all(ctx: Context, work: list[wl.SimJob]) -> None:
    """Validate each distinct job shape once through the service, then write every job (QUEUED)."""
    with ctx.db.session() as s:
        checked: dict[str, Any] = {}
        for j in work:
            if j.model not in checked:
                checked[j.model] = admission.validate_job(s, ctx.pool, wl.TEMPLATE, j.params)
            row, t, _ = checked[j.model]
            job_app.create_job(s, row, t, {**checked[j.model][2], **j.params})


def count_queued(ctx: Context) -> int:
    with ctx.db.session() as s:
        return s.exec(select(func.count()).where(Job.state == JobState.QUEUED)).one()


def count_done(ctx: Context) -> tuple[int, int]:
    with ctx.db.session() as s:
        done = s.exec(select(func.count()).where(Job.state.in_(TERMINAL))).one()  # type: ignore[attr-defined]
        ok = s.exec(select(func.count()).where(Job.state == JobState.SUCCEEDED)).one()
    return done, ok


def run_mode(mode: str, args: argparse.Namespace, work: list[wl.SimJob], models: dict[str, float],
             root: Path) -> ModeResult:
    scale = args.time_scale / 1000.0
    home = root / mode
    with SimPool(args.servers, models, scale, home / "sim", progress_events=args.progress_events) as pool:
        settings = Settings(home=home, templates_dir=wl.write_template(root / "templates"), comfy_servers=pool.urls,
                            placement=mode, event_timeout_s=30.0)
        ctx = Context(settings)
        try:
            ctx.start_pool()
            healthy = sum(1 for s in ctx.pool.servers if s.healthy)
            if healthy < args.servers:
                raise RuntimeError(f"only {healthy} of {args.servers} simulated servers answered the probe")
            t0 = time.perf_counter()
            submit_all(ctx, work)
            submit_s = time.perf_counter() - t0
            place_cpu, round_cpu = CpuMeter(), CpuMeter()
            _instrument(place_cpu, round_cpu)
            try:
                start = time.time()
                drained = None
                ctx.start_dispatcher()
                while (done := count_done(ctx))[0] < len(work):
                    if drained is None and count_queued(ctx) == 0:
                        drained = time.time()
                    time.sleep(0.25)
                run_s = time.time() - start
            finally:
                _uninstrument()
            stats = pool.stats()
        finally:
            ctx.close()
    end = max(s["last_end"] or start for s in stats)
    makespan = (end - start) / scale
    busy = sum(s["busy_s"] for s in stats) / scale
    drained = drained or end
    steady = sum(max(0.0, min(e, drained) - max(b, start)) for s in stats for b, e in s["intervals"])
    placements = sum(s["jobs"] for s in stats)
    return ModeResult(
        mode=mode, servers=args.servers, jobs=len(work), succeeded=done[1], makespan_s=round(makespan, 1),
        lower_bound_s=round(wl.lower_bound_s(work, args.servers), 1),
        utilization=round(busy / (args.servers * makespan), 4),
        steady_utilization=round(steady / (args.servers * (drained - start)), 4),
        work_share=round(sum(j.duration_s for j in work) / busy, 4) if busy else 0.0,
        loads=sum(s["loads"] for s in stats), placements=placements,
        placement_cpu_us=round(place_cpu.seconds / max(placements, 1) * 1e6, 1),
        dispatch_cpu_us=round(round_cpu.seconds / max(placements, 1) * 1e6, 1),
        submit_s=round(submit_s, 1), run_s=round(run_s, 1))


_saved: dict[str, Any] = {}


def _instrument(place_cpu: CpuMeter, round_cpu: CpuMeter) -> None:
    """Time the placement decision and whole dispatch rounds (thread CPU) without changing them."""
    _saved["round"] = sched.Dispatcher.dispatch_once
    sched.Dispatcher.dispatch_once = round_cpu.wrap(sched.Dispatcher.dispatch_once)  # type: ignore[method-assign]
    _saved["plan"] = placement.Placer.plan
    placement.Placer.plan = place_cpu.wrap(placement.Placer.plan)  # type: ignore[method-assign]


def _uninstrument() -> None:
    sched.Dispatcher.dispatch_once = _saved.pop("round")  # type: ignore[method-assign]
    placement.Placer.plan = _saved.pop("plan")  # type: ignore[method-assign]


def report(results: list[ModeResult], args: argparse.Namespace, models: dict[str, float],
           work: list[wl.SimJob]) -> str:
    durations = [j.duration_s for j in work]
    lines = [f"simulated pool: {args.servers} servers, {len(work)} jobs over {len(models)} models, "
             f"1 simulated s = {args.time_scale:g} ms real",
             f"job durations (simulated s): mean {statistics.mean(durations):.1f}, min {min(durations):.1f}, "
             f"max {max(durations):.1f}; model loads {min(models.values()):.1f}-{max(models.values()):.1f} s",
             "", f"{'mode':<12} {'done':>7} {'util':>7} {'steady':>7} {'makespan':>10} {'bound':>9} {'ratio':>6} "
             f"{'loads':>7} {'place/job':>10} {'round/job':>10} {'wall':>7}"]
    for r in results:
        lines.append(f"{r.mode:<12} {r.succeeded:>7} {r.utilization * 100:6.1f}% {r.steady_utilization * 100:6.1f}% "
                     f"{r.makespan_s:>9.0f}s {r.lower_bound_s:>8.0f}s {r.makespan_ratio:>6.2f} {r.loads:>7} "
                     f"{r.placement_cpu_us:>8.0f}us {r.dispatch_cpu_us:>8.0f}us {r.run_s:>6.0f}s")
    by = {r.mode: r for r in results}
    if "affinity" in by and "round_robin" in by:
        a, rr = by["affinity"], by["round_robin"]
        lines.append(f"\nmodel loads: round-robin {rr.loads} / affinity {a.loads} = "
                     f"{rr.loads / max(a.loads, 1):.1f}x fewer with affinity (target >= 3x)")
    lines.append("utilization target >= 95%; util = busy time incl. loads / (servers x makespan); steady = the "
                 "same until the queue emptied (before the tail of the last jobs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[ModeResult]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--time-scale", type=float, default=20.0, help="real ms per simulated second")
    ap.add_argument("--modes", default="affinity,round_robin", help="placement modes to compare")
    ap.add_argument("--progress-events", type=int, default=5, help="progress messages per job")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = wl.models(args.models, args.seed)
    work = wl.jobs(args.jobs, args.models, args.seed)
    root = Path(tempfile.mkdtemp(prefix="medialab-sched-"))
    results = [run_mode(mode, args, work, models, root) for mode in args.modes.split(",")]
    print(report(results, args, models, work))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


if __name__ == "__main__":
    main()
