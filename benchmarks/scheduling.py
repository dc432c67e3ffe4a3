"""Scheduling at scale: the real dispatcher against a simulated pool of ComfyUI servers.

Usage: python benchmarks/scheduling.py [--servers 100 --jobs 10000 --models 20 --time-scale 100]
                                       [--db sqlite|postgresql] [--replicas 1,2,3]

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

``--db postgresql`` runs on a scratch PostgreSQL database (127.0.0.1:5432, dropped afterwards). ``--replicas N``
(or a list, ``1,2,3``: one run each) runs the dispatch in N processes of their own (``benchmarks/sim/replica.py``,
each a full ``Context``: pool, dispatcher, executor) sharing the queue on that database; 0 (the default) keeps
the dispatcher in this process. Placements per second are jobs started (their attempts' ``started_at``) per
wall second while the queue was not empty, judged (``verdict.judge``) from 1-s windows, as is the utilization
until the queue emptied (busy fraction of the servers per 1-s window).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import verdict  # noqa: E402
from benchmarks.sim import workload as wl  # noqa: E402
from benchmarks.sim.pool import SimPool  # noqa: E402
from orchestrator.app import admission
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context  # noqa: E402
from orchestrator.core import placement  # noqa: E402
from orchestrator.core.states import JobState  # noqa: E402
from orchestrator.db.tables import Attempt, Job  # noqa: E402
from orchestrator.runtime import dispatcher as sched  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.pg import scratch_postgres  # noqa: E402

TERMINAL = [s for s in JobState if s.terminal]
ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 1.0  # the per-interval samples of throughput and utilization
PLACEMENT_TARGET = 500.0  # jobs started per second (issue 17)
UTIL_TARGET = 0.97  # until the queue empties
LOADS_TARGET = 10.0  # x fewer model loads than round-robin


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
    database: str = "sqlite"
    replicas: int = 0  # dispatcher processes of their own (0: the dispatcher ran in the benchmark's process)
    placements_per_s: float = 0.0  # jobs started per wall second while the queue was not empty
    placement_windows: list[float] = field(default_factory=list)  # jobs started per 1-s window (the samples)
    util_windows: list[float] = field(default_factory=list)  # busy fraction per 1-s window until the queue emptied

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
             root: Path, replicas: int = 0) -> ModeResult:
    if args.db == "postgresql":
        with scratch_postgres() as url:
            if url is None:
                raise SystemExit("--db postgresql: no PostgreSQL at 127.0.0.1:5432")
            return _run_mode(mode, args, work, models, root, replicas, url)
    if replicas:
        raise SystemExit("--replicas needs --db postgresql (replicas share the queue on PostgreSQL)")
    return _run_mode(mode, args, work, models, root, 0, None)


def _run_mode(mode: str, args: argparse.Namespace, work: list[wl.SimJob], models: dict[str, float],
              root: Path, replicas: int, db_url: str | None) -> ModeResult:
    scale = args.time_scale / 1000.0
    home = root / f"{mode}-{args.db}-{replicas}"
    with SimPool(args.servers, models, scale, home / "sim", progress_events=args.progress_events) as pool:
        settings = Settings(home=home, templates_dir=wl.write_template(root / "templates"), comfy_servers=pool.urls,
                            placement=mode, event_timeout_s=30.0, database_url=db_url)
        ctx = Context(settings)
        procs: list[subprocess.Popen[str]] = []
        try:
            if not replicas:
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
                if replicas:  # started one after another (each registers the servers), then released together
                    procs = start_replicas(settings, replicas, home)
                start = time.time()
                drained = None
                if replicas:
                    for p in procs:
                        assert p.stdin is not None
                        p.stdin.write("go\n")
                        p.stdin.flush()
                else:
                    ctx.start_dispatcher()
                while (done := count_done(ctx))[0] < len(work):
                    if drained is None and count_queued(ctx) == 0:
                        drained = time.time()
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError(f"a dispatcher replica stopped; logs under {home}")
                    time.sleep(0.25)
                run_s = time.time() - start
            finally:
                _uninstrument()
                stop_replicas(procs)
            stats = pool.stats()
            starts = started_times(ctx)
        finally:
            ctx.close()
    end = max(s["last_end"] or start for s in stats)
    makespan = (end - start) / scale
    busy = sum(s["busy_s"] for s in stats) / scale
    drained = max(starts) if starts else (drained or end)  # the last job started: the queue was empty from then
    steady = sum(max(0.0, min(e, drained) - max(b, start)) for s in stats for b, e in s["intervals"])
    placements = sum(s["jobs"] for s in stats)
    first = min(starts) if starts else start
    return ModeResult(
        mode=mode, servers=args.servers, jobs=len(work), succeeded=done[1], makespan_s=round(makespan, 1),
        lower_bound_s=round(wl.lower_bound_s(work, args.servers), 1),
        utilization=round(busy / (args.servers * makespan), 4),
        steady_utilization=round(steady / (args.servers * (drained - start)), 4),
        work_share=round(sum(j.duration_s for j in work) / busy, 4) if busy else 0.0,
        loads=sum(s["loads"] for s in stats), placements=placements,
        placement_cpu_us=round(place_cpu.seconds / max(placements, 1) * 1e6, 1),
        dispatch_cpu_us=round(round_cpu.seconds / max(placements, 1) * 1e6, 1),
        submit_s=round(submit_s, 1), run_s=round(run_s, 1), database=args.db, replicas=replicas,
        placements_per_s=round(len(starts) / max(drained - first, WINDOW_S), 1),
        placement_windows=windows(starts, first, drained),
        util_windows=busy_windows([iv for s in stats for iv in s["intervals"]], start, drained, args.servers))


def start_replicas(settings: Settings, n: int, home: Path) -> list[subprocess.Popen[str]]:
    """``n`` dispatcher processes (``benchmarks/sim/replica.py``) on the settings' database and store, each
    started once the one before it is ready; each begins dispatching when it reads a line on its stdin."""
    config = {"home": str(home), "templates_dir": str(settings.templates_dir), "database_url": settings.database_url,
              "comfy_servers": settings.comfy_servers, "placement": settings.placement, "event_timeout_s": 30.0,
              "storage_dir": str(settings.objects)}
    procs: list[subprocess.Popen[str]] = []
    for i in range(n):
        path = home / f"replica{i}.json"
        path.write_text(json.dumps({**config, "replica_id": f"replica{i}"}))
        p = subprocess.Popen([sys.executable, "-m", "benchmarks.sim.replica", str(path), "--wait"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             stderr=(home / f"replica{i}.log").open("w"))
        procs.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            stop_replicas(procs)
            raise RuntimeError(f"dispatcher replica {i} did not start; log {home / f'replica{i}.log'}")
    return procs


def stop_replicas(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def started_times(ctx: Context) -> list[float]:
    """When each attempt started (epoch seconds; SQLite gives them back without their UTC zone)."""
    with ctx.db.session() as s:
        rows = s.exec(select(Attempt.started_at)).all()
    return sorted((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() for t in rows if isinstance(t, datetime))


def windows(times: list[float], start: float, end: float) -> list[float]:
    """Events per ``WINDOW_S`` window of [start, end) (whole windows; one partial window if shorter)."""
    n = max(int((end - start) // WINDOW_S), 1)
    counts = [0.0] * n
    for t in times:
        i = int((t - start) // WINDOW_S)
        if 0 <= i < n:
            counts[i] += 1
    return [c / WINDOW_S for c in counts]


def busy_windows(intervals: list[tuple[float, float]], start: float, end: float, servers: int) -> list[float]:
    """The servers' busy fraction per ``WINDOW_S`` window of [start, end)."""
    n = max(int((end - start) // WINDOW_S), 1)
    busy = [0.0] * n
    for b, e in intervals:
        b, e = max(b, start), min(e, start + n * WINDOW_S)
        i = int((b - start) // WINDOW_S)
        while b < e and i < n:
            edge = start + (i + 1) * WINDOW_S
            busy[i] += min(e, edge) - b
            b, i = edge, i + 1
    return [x / (servers * WINDOW_S) for x in busy]


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
    lines.append("\nplacement (jobs started per wall second while the queue was not empty) and utilization until "
                 "the queue emptied, judged from 1-s windows:")
    for r in results:
        who = f"{r.replicas} dispatcher process(es)" if r.replicas else "dispatcher in the benchmark's process"
        lines.append(f"  {r.mode}, {r.database}, {who}: {r.placements_per_s:.1f} jobs/s overall")
        if r.placement_windows:
            lines.append("    " + verdict.judge("placements per second", r.placement_windows, PLACEMENT_TARGET,
                                               higher_is_better=True, unit="jobs/s").line())
        if r.util_windows:
            lines.append("    " + verdict.judge("utilization until the queue emptied", r.util_windows, UTIL_TARGET,
                                               higher_is_better=True).line())
    affinity = [r for r in results if r.mode == "affinity"]
    rr = [r for r in results if r.mode == "round_robin"]
    if affinity and rr:
        ratio = rr[0].loads / max(affinity[0].loads, 1)
        lines.append(f"\nmodel loads: round-robin {rr[0].loads} / affinity {affinity[0].loads} = {ratio:.1f}x fewer "
                     f"with affinity (target >= {LOADS_TARGET:g}x: {'MET' if ratio >= LOADS_TARGET else 'NOT MET'}; "
                     "one run each, no interval)")
    lines.append("util = busy time incl. loads / (servers x makespan); steady = the same until the queue emptied "
                 "(the last job started)")
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
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--replicas", default="0", help="dispatcher processes (a list runs each: 1,2,3); 0: in-process")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = wl.models(args.models, args.seed)
    work = wl.jobs(args.jobs, args.models, args.seed)
    root = Path(tempfile.mkdtemp(prefix="medialab-sched-"))
    results = []
    for mode in args.modes.split(","):
        for n in args.replicas.split(","):
            results.append(r := run_mode(mode, args, work, models, root, int(n)))
            print(f"done: {mode}, {args.db}, replicas {n}: {json.dumps(asdict(r))}", flush=True)  # a long run's parts
    print(report(results, args, models, work))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


if __name__ == "__main__":
    main()
