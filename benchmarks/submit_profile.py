"""One POST /v1/jobs, dissected: database round trips (statements) per submit and where the time goes.

Usage: python benchmarks/submit_profile.py [--submits 200 --database postgresql] [--cprofile out.prof]

The real app (``create_app``, dispatcher off so only the submit path runs) under Starlette's TestClient,
against a scratch PostgreSQL (or SQLite) and 2 simulated ComfyUI servers (the pool the submit checks).
Counts every statement the engine sends (``before_cursor_execute``) and every connection checkout, split
into the guard's key check and the route, and reports the mean wall time per submit.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sim import workload as wl  # noqa: E402
from benchmarks.sim.pool import SimPool  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.pg import scratch_postgres  # noqa: E402

MARKS: collections.Counter[str] = collections.Counter()


def timed(module: object, name: str, label: str) -> None:
    """Wrap ``module.name`` so its wall time adds to ``MARKS[label]`` (any thread)."""
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            MARKS[label] += time.perf_counter() - t0

    setattr(module, name, wrapper)


def mark_submit_path() -> None:
    """The parts of a submit, timed where the route and the guard look them up."""
    from orchestrator.api import guard
    from orchestrator.api.routes import jobs as job_routes
    from orchestrator.app import admission
    from orchestrator.app import jobs as job_app

    timed(guard, "cached_key", "guard: key from the cache (in the event loop)")
    timed(guard, "check_key", "guard: key check (a miss: session, lookup; touch)")
    submit = "submit" if hasattr(job_routes.job_app, "submit") else "submit_job"  # (before: submit_job)
    timed(job_routes.job_app, submit, "route: submit (all of it)")
    timed(job_app, "check_job_fields", "  check_job_fields")
    timed(job_app, "validate_job", "  validate_job")
    timed(admission, "get_template", "    get_template")
    timed(admission, "validate_values", "    validate_values")
    timed(job_app, "create_job", "  create_job (inserts, commit)")
    timed(job_routes, "job_out", "route: job_out (response reads)")


def profile(settings: Settings, submits: int, prof: Path | None) -> None:
    from fastapi.testclient import TestClient

    from orchestrator.api.app import create_app
    from orchestrator.app import keys as key_app

    work = wl.jobs(submits + 5, 4)
    with TestClient(create_app(settings, dispatch=False)) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        with ctx.db.session() as s:
            _row, key = key_app.create_key(s, "prof", ["run"])
        client.headers["X-API-Key"] = key
        for j in work[:5]:  # warm-up: caches, first connections
            client.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": j.params}).raise_for_status()
        statements: collections.Counter[str] = collections.Counter()
        checkouts = [0]

        @event.listens_for(ctx.db.engine, "before_cursor_execute")
        def _count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            statements[" ".join(statement.split())[:110]] += 1

        @event.listens_for(ctx.db.engine, "checkout")
        def _checkout(*_args) -> None:  # type: ignore[no-untyped-def]
            checkouts[0] += 1

        for name in ("begin", "commit", "rollback"):  # each one round trip on psycopg (BEGIN is sent on its own)
            event.listen(ctx.db.engine, name, lambda _conn, name=name: statements.update([name.upper()]))

        MARKS.clear()
        profiler = cProfile.Profile() if prof else None
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        for j in work[5:]:
            client.post("/v1/jobs", json={"template": wl.TEMPLATE, "params": j.params}).raise_for_status()
        if profiler:
            profiler.disable()
            profiler.dump_stats(prof)
        dt = time.perf_counter() - t0
        total = sum(statements.values())
        pings = checkouts[0] if ctx.db.engine.pool._pre_ping else 0  # pool_pre_ping: a SELECT 1 per checkout
        print(f"{settings.database.split(':')[0]}: {submits} submits, {dt / submits * 1000:.2f} ms each "
              f"(TestClient, one thread); per submit: {(total + pings) / submits:.2f} database round trips = "
              f"{total / submits:.2f} statements (BEGIN, COMMIT, ROLLBACK included) + "
              f"{pings / submits:.2f} pre-ping checkouts")
        for stmt, n in statements.most_common():
            print(f"  {n / submits:5.2f}  {stmt}")
        print("wall time per submit, by part (ms):")
        for label, sec in MARKS.items():
            print(f"  {sec / submits * 1000:6.2f}  {label}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submits", type=int, default=200)
    ap.add_argument("--database", default="postgresql", choices=["postgresql", "sqlite"])
    ap.add_argument("--cprofile", type=Path)
    args = ap.parse_args(argv)
    mark_submit_path()
    root = Path(tempfile.mkdtemp(prefix="medialab-prof-"))
    with SimPool(2, wl.models(4), 0.02, root / "sim") as pool:
        base = dict(home=root / "home", templates_dir=wl.write_template(root / "templates"), comfy_servers=pool.urls)
        if args.database == "sqlite":
            profile(Settings(**base), args.submits, args.cprofile)
            return
        with scratch_postgres() as url:
            if url:
                profile(Settings(**base, database_url=url), args.submits, args.cprofile)


if __name__ == "__main__":
    main()
