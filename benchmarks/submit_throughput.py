"""Submit throughput: jobs per second the API accepts, on SQLite and on PostgreSQL, while jobs run.

Usage: python benchmarks/submit_throughput.py [--jobs 400 --clients 8 --servers 8]

The real FastAPI app (``create_app``, dispatcher on) is served by uvicorn in a thread over real HTTP.
``--clients`` threads, each with its own httpx client and the same ``run`` API key, POST /v1/jobs
(validation, job row, first event, 201 with the job) as fast as answers come back. Meanwhile the
dispatcher runs the jobs on a simulated pool (``benchmarks/sim``: ``--servers`` ComfyUI servers speaking
the real protocol, ``--time-scale`` real ms per simulated second), so claims, websocket events and
output ingest compete with the submissions for the database and the CPU, as in production. Reported
per database: accepted jobs per second, p50/p99 latency of a submit, errors, and how many jobs the
dispatcher had started by the time the last submit was answered. PostgreSQL at 127.0.0.1:5432 (trust
auth) gets a scratch database that is dropped afterwards; when it is down that run is skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from sqlalchemy import func
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import serve_api  # noqa: E402
from benchmarks.sim import workload as wl  # noqa: E402
from benchmarks.sim.pool import SimPool  # noqa: E402
from orchestrator.core.states import JobState  # noqa: E402
from orchestrator.db import attempts as attempt_db
from orchestrator.db.tables import Job  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.pg import scratch_postgres  # noqa: E402


@dataclass
class SubmitRun:
    database: str
    jobs: int
    clients: int
    accepted: int
    errors: int
    seconds: float
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    started_meanwhile: int  # jobs the dispatcher had claimed when the last submit was answered


def started_jobs(ctx: object) -> int:
    with ctx.db.session() as s:  # type: ignore[attr-defined]
        return s.exec(select(func.count()).where(Job.state != JobState.QUEUED)).one()


def drain(ctx: object, timeout_s: float = 120.0) -> None:
    """Stop dispatching and let the attempts in flight end, so nothing touches the database after this."""
    ctx.dispatcher.stop()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with ctx.db.session() as s:  # type: ignore[attr-defined]
            if not attempt_db.inflight_by_server(s):
                return
        time.sleep(0.1)


def measure(database: str, settings: Settings, work: list[wl.SimJob], clients: int) -> SubmitRun:
    with serve_api(settings) as (base, key, app):
        ctx = app.state.ctx
        headers = {"X-API-Key": key}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as c:  # warm-up: first request costs
            c.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": work[0].params}).raise_for_status()
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(part: list[wl.SimJob]) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                for j in part:
                    t0 = time.perf_counter()
                    r = c.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": j.params})
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 201:
                            latencies.append(dt)
                        else:
                            errors.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=client, args=(work[1 + i::clients],)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        meanwhile = started_jobs(ctx)
        drain(ctx)
    if errors:
        print(f"{database}: {len(errors)} submit(s) refused, first: {errors[0]}")
    lat = sorted(latencies)
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else lat[0]
    return SubmitRun(database, len(work) - 1, clients, len(lat), len(errors), round(seconds, 2),
                     round(len(lat) / seconds, 1), round(statistics.median(lat) * 1000, 1), round(p99 * 1000, 1),
                     meanwhile)



def main(argv: list[str] | None = None) -> list[SubmitRun]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=400, help="submissions per database")
    ap.add_argument("--clients", type=int, default=8, help="client threads")
    ap.add_argument("--servers", type=int, default=8, help="simulated ComfyUI servers working meanwhile")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--time-scale", type=float, default=20.0, help="real ms per simulated second")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="medialab-submit-"))
    models = wl.models(args.models)
    work = wl.jobs(args.jobs + 1, args.models)
    runs = []
    for database in args.databases.split(","):
        with SimPool(args.servers, models, args.time_scale / 1000, root / database / "sim") as pool:
            base = dict(home=root / database, templates_dir=wl.write_template(root / "templates"),
                        comfy_servers=pool.urls)
            if database == "sqlite":
                runs.append(measure(database, Settings(**base), work, args.clients))
                continue
            with scratch_postgres() as url:
                if url:
                    runs.append(measure(database, Settings(**base, database_url=url), work, args.clients))
    print(f"{args.jobs} submits per database from {args.clients} client threads over HTTP (uvicorn, one process); "
          f"the dispatcher runs them meanwhile on {args.servers} simulated servers")
    for r in runs:
        print(f"{r.database:<11} {r.jobs_per_s:7.1f} jobs/s accepted   p50 {r.p50_ms:6.1f} ms   p99 {r.p99_ms:6.1f} ms"
              f"   errors {r.errors}   started meanwhile {r.started_meanwhile}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return runs


if __name__ == "__main__":
    main()
