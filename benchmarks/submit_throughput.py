"""Submit throughput on PostgreSQL: single POST /v1/jobs per second from several client processes, while jobs run.

Usage: python benchmarks/submit_throughput.py [--workers 1,2 --clients 4,8 --seconds 10 --servers 8]

For each (workers, clients) pair: ``medialab serve --workers N`` is started as a subprocess (uvicorn, dispatcher
on in every worker: each a replica sharing the queue) on a scratch PostgreSQL database (127.0.0.1:5432, trust
auth; dropped afterwards). ``--clients`` client PROCESSES, each with one keep-alive httpx client and the same
``run`` API key, POST /v1/jobs (validation, job row, first event, 201 with the job) one after another as fast
as the answers come, for ``--seconds``. Meanwhile the dispatchers run the jobs on a simulated pool
(``benchmarks/sim``: ``--servers`` ComfyUI servers speaking the real protocol, ``--time-scale`` real ms per
simulated second), so claims, websocket events and output ingest compete with the submissions for the database
and the CPU. The client processes run on the same machine and take CPU from the server.

Reported per pair: accepted submits per second, p50/p99 latency, errors, how many jobs the dispatchers had
started by the end; and the target (1,000 submits/s, issue 17) judged by ``benchmarks/verdict.py`` from the
submits of each 1-s window of the steady part (the first and the last second left out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sim import workload as wl  # noqa: E402
from benchmarks.sim.pool import SimPool  # noqa: E402
from benchmarks.verdict import judge  # noqa: E402
from orchestrator.app import keys as key_app  # noqa: E402
from orchestrator.comfy.worker import stop_group  # noqa: E402
from orchestrator.core.states import JobState  # noqa: E402
from orchestrator.db.engine import Database  # noqa: E402
from orchestrator.db.tables import Job  # noqa: E402
from tests.pg import scratch_postgres  # noqa: E402

TARGET = 1000.0  # submits per second (issue 17)


@dataclass
class SubmitRun:
    workers: int
    clients: int
    accepted: int
    errors: int
    seconds: float
    submits_per_s: float
    p50_ms: float
    p99_ms: float
    started_meanwhile: int  # jobs the dispatchers had claimed by the end
    windows: list[int]  # accepted submits per 1-s window of the steady part
    first_error: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(env: dict[str, str], workers: int, log: Path, dispatch: bool = True) -> Iterator[str]:
    """``medialab serve`` as a subprocess (its own process group); yields its base URL once /healthz answers."""
    port = free_port()
    cmd = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", "serve", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if not dispatch:
        cmd.append("--no-dispatch")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited ({proc.returncode}); log {log}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer within 120 s; log {log}")
            time.sleep(0.2)
        yield base
    finally:
        stop_group(proc, signal.SIGINT, timeout=60)  # SIGINT: uvicorn shuts its workers down


def client(base: str, key: str, params: list[dict[str, Any]], ready: Any, start: Any, seconds: float,
           results: Any) -> None:
    """One client process: connect (a keep-alive connection, one submit), say so on ``ready``, wait for ``start``
    (its value: the wall-clock start), then submit one job after another for ``seconds``; put (answered at,
    latency s, status, text of a refusal) of each on ``results``."""
    out: list[tuple[float, float, int, str]] = []
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as c:
        c.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": params[0]})
        ready.put(True)
        while start.value == 0.0:
            time.sleep(0.01)
        stop_at = start.value + seconds
        i = 0
        while time.time() < stop_at:
            t0 = time.perf_counter()
            r = c.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": params[i % len(params)]})
            out.append((time.time(), time.perf_counter() - t0, r.status_code, "" if r.status_code == 201
                        else r.text[:200]))
            i += 1
    results.put(out)


def started_jobs(db: Database) -> int:
    with db.session() as s:
        return s.exec(select(func.count()).where(Job.state != JobState.QUEUED)).one()


def measure(url: str, pool: SimPool, templates: Path, home: Path, workers: int, clients: int, seconds: float,
            work: list[wl.SimJob], dispatch: bool = True) -> SubmitRun:
    env = {**os.environ, "MEDIALAB_HOME": str(home), "MEDIALAB_DATABASE_URL": url,
           "MEDIALAB_TEMPLATES_DIR": str(templates), "MEDIALAB_COMFY_SERVERS": json.dumps(pool.urls),
           "MEDIALAB_LOCAL_TRAINER": "false", "PYTHONPATH": str(ROOT)}
    home.mkdir(parents=True, exist_ok=True)
    with serve(env, workers, home / "serve.log", dispatch) as base:
        db = Database(url)
        with db.session() as s:
            _row, key = key_app.create_key(s, "bench", ["run"])
        params = [j.params for j in work]
        ctx = mp.get_context("spawn")
        results, ready, start = ctx.Queue(), ctx.Queue(), ctx.Value("d", 0.0)
        procs = [ctx.Process(target=client, args=(base, key, params[i::clients], ready, start, seconds, results))
                 for i in range(clients)]
        for p in procs:
            p.start()
        for _ in procs:  # every client started, connected and warm before the clock starts
            ready.get(timeout=300)
        start_at = start.value = time.time()
        rows = [r for _ in procs for r in results.get(timeout=seconds + 120)]
        for p in procs:
            p.join(30)
        meanwhile = started_jobs(db)
        db.engine.dispose()
    ok = [r for r in rows if r[2] == 201]
    errors = [r for r in rows if r[2] != 201]
    lat = sorted(r[1] for r in ok)
    per_window = Counter(int(r[0] - start_at) for r in ok)
    windows = [per_window.get(w, 0) for w in range(1, int(seconds) - 1)]  # steady: the first and last second out
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else (lat[0] if lat else 0.0)
    return SubmitRun(workers, clients, len(ok), len(errors), seconds, round(len(ok) / seconds, 1),
                     round(statistics.median(lat) * 1000, 1) if lat else 0.0, round(p99 * 1000, 1), meanwhile,
                     windows, f"{errors[0][2]} {errors[0][3]}" if errors else "")


def main(argv: list[str] | None = None) -> list[SubmitRun]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="uvicorn worker processes to compare (comma-separated)")
    ap.add_argument("--clients", default="4,8", help="client processes to compare (comma-separated)")
    ap.add_argument("--seconds", type=float, default=10.0, help="submitting time per pair")
    ap.add_argument("--servers", type=int, default=8, help="simulated ComfyUI servers working meanwhile")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--time-scale", type=float, default=20.0, help="real ms per simulated second")
    ap.add_argument("--no-dispatch", action="store_true", help="serve with --no-dispatch: the submit path alone "
                    "(jobs stay QUEUED, the simulated servers idle)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="medialab-submit-"))
    work = wl.jobs(500, args.models)
    templates = wl.write_template(root / "templates")
    runs: list[SubmitRun] = []
    with SimPool(args.servers, wl.models(args.models), args.time_scale / 1000, root / "sim") as pool:
        for workers in (int(w) for w in args.workers.split(",")):
            for clients in (int(c) for c in args.clients.split(",")):
                with scratch_postgres() as url:
                    if not url:
                        return runs
                    runs.append(measure(url, pool, templates, root / f"w{workers}c{clients}", workers, clients,
                                        args.seconds, work, not args.no_dispatch))
    meanwhile = ("nothing dispatched (--no-dispatch)" if args.no_dispatch else
                 f"the dispatchers run the jobs meanwhile on {args.servers} simulated servers")
    print(f"PostgreSQL, {args.seconds:g} s of single submits per pair from client processes over HTTP (keep-alive); "
          f"{meanwhile}; load average {os.getloadavg()[0]:.2f} at the end")
    for r in runs:
        print(f"workers {r.workers} clients {r.clients}: {r.submits_per_s:7.1f} submits/s   p50 {r.p50_ms:6.1f} ms   "
              f"p99 {r.p99_ms:6.1f} ms   errors {r.errors}   started meanwhile {r.started_meanwhile}"
              + (f"   first error: {r.first_error}" if r.first_error else ""))
    for r in runs:
        if r.windows:
            print(judge(f"submits/s, workers {r.workers}, clients {r.clients} (per 1-s window)", r.windows, TARGET,
                        higher_is_better=True, unit="submits/s").line())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return runs


if __name__ == "__main__":
    main()
