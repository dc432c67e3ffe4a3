"""The dispatch round's own throughput: placement and claims, nothing executed.

Usage: python benchmarks/placement_rate.py [--servers 1000 --jobs 100000 --models 20 --db sqlite|postgresql]

A queue of ``--jobs`` QUEUED jobs (the simulated workload's template and models; the first job of each model
written by ``app.jobs``, the rest copies of its row, so writing them is quick) and ``--servers`` server views
(healthy, every model on disk, one warm each). The real ``Dispatcher.dispatch_once`` runs round after round:
the database reads (ready check, in-flight counts, trainer leases, the candidates with SKIP LOCKED on
PostgreSQL, running counts per key, template versions), requirements, fair order, ``Placer.plan`` and the
batched claims (``attempts.start_attempts``) with their commit. Nothing runs: the attempts are not handed to
runners, and the views report every server idle again each round (as if every prompt ended at once), so a round
fills every free slot (``dispatcher.MAX_BATCH`` jobs at most) and this is the most the round itself can place.
Reported: jobs placed per second of wall time (judged from the rounds' own rates) and per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import verdict  # noqa: E402
from benchmarks.sim import workload as wl  # noqa: E402
from orchestrator.app import jobs as job_app  # noqa: E402
from orchestrator.app import templates as template_app  # noqa: E402
from orchestrator.core import templates as tpl  # noqa: E402
from orchestrator.core.capabilities import Capabilities, ModelRef  # noqa: E402
from orchestrator.core.placement import ServerView  # noqa: E402
from orchestrator.db import templates as template_db  # noqa: E402
from orchestrator.db.engine import Database  # noqa: E402
from orchestrator.db.tables import Job, new_id, now  # noqa: E402
from orchestrator.runtime import library  # noqa: E402
from orchestrator.runtime.dispatcher import Dispatcher  # noqa: E402
from orchestrator.runtime.pool import Server  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.pg import scratch_postgres  # noqa: E402

TARGET = 500.0  # jobs placed per second (issue 17)


class IdlePool:
    """Server views for placement only: every server idle at each round, its warm model remembered."""

    def __init__(self, n: int, model_names: list[str]) -> None:
        nodes = frozenset(node["class_type"] for node in wl.GRAPH.values())
        caps = Capabilities(node_classes=nodes, models={wl.FOLDER: frozenset(model_names)})
        self.servers = [Server(f"s{i}", f"sim{i}", f"http://sim{i}:8188", None, None, healthy=True, caps=caps,
                               warm=frozenset({(wl.FOLDER, model_names[i % len(model_names)])})) for i in range(n)]
        self.by_url = {s.url: s for s in self.servers}

    def views(self, inflight: dict[str, int] | None = None) -> list[ServerView]:
        return [s.view(0) for s in self.servers]

    def get(self, url: str) -> Server | None:
        return self.by_url.get(url)

    def note_dispatch(self, srv: Server, models: frozenset[ModelRef]) -> None:
        srv.warm = models or srv.warm

    def unusable(self) -> set[str]:
        return set()


class Held:
    """The executor's side the dispatcher uses here: its owner and the attempts it follows."""

    owner = "placement-bench"

    def hold(self, attempt_id: str) -> None:
        pass


class NoRunners:
    def submit(self, *a: Any, **kw: Any) -> None:
        pass

    def shutdown(self, **kw: Any) -> None:
        pass


def write_queue(db: Database, n: int, model_names: list[str]) -> None:
    work = wl.jobs(n, len(model_names))
    with db.session() as s:
        row, t = template_db.get_template(s, wl.TEMPLATE)
        first = {}
        for j in work:
            if j.model not in first:
                first[j.model] = job_app.create_job(s, row, t, tpl.validate_params(t, j.params))
        s.commit()
        base = {m: job.model_dump(exclude={"id", "queued_at", "created_at"}) for m, job in first.items()}
        rows = []
        for k, j in enumerate(work[len(first):]):
            stamp = now()
            rows.append({**base[j.model], "id": new_id(), "params": {**base[j.model]["params"], "seed": k},
                         "queued_at": stamp, "created_at": stamp})
            if len(rows) == 2000:
                s.execute(insert(Job), rows)
                rows = []
        if rows:
            s.execute(insert(Job), rows)
        s.commit()


def run(url: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    db = Database(url)
    templates = wl.write_template(home / "templates")
    with db.session() as s:
        template_app.sync_templates(s, library.scan_library(templates))
    names = list(wl.models(args.models))
    t0 = time.perf_counter()
    write_queue(db, args.jobs, names)
    write_s = time.perf_counter() - t0
    settings = Settings(home=home, templates_dir=templates, database_url=url)
    d = Dispatcher(db, IdlePool(args.servers, names), Held(), settings)  # type: ignore[arg-type]
    d._runners.shutdown(wait=False)
    d._runners = NoRunners()  # type: ignore[assignment]
    rates, sizes, placed = [], [], 0
    start = time.perf_counter()
    while placed < args.jobs:
        r0 = time.perf_counter()
        n = d.dispatch_once()
        if not n:
            break
        rates.append(n / (time.perf_counter() - r0))
        sizes.append(n)
        placed += n
    wall = time.perf_counter() - start
    db.engine.dispose()
    return {"placed": placed, "wall_s": wall, "write_s": write_s, "rates": rates, "sizes": sizes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="medialab-place-"))
    if args.db == "postgresql":
        with scratch_postgres() as url:
            if url is None:
                raise SystemExit("--db postgresql: no PostgreSQL at 127.0.0.1:5432")
            out = run(url, args, home)
    else:
        out = run(f"sqlite:///{home / 'db.sqlite'}", args, home)
    print(f"placement only ({args.db}): {args.jobs} queued jobs over {args.servers} idle server views, "
          f"{args.models} models (queue written in {out['write_s']:.1f} s)")
    print(f"  placed {out['placed']} in {out['wall_s']:.1f} s wall = {out['placed'] / out['wall_s']:.0f} jobs/s, "
          f"{len(out['sizes'])} rounds of {statistics.mean(out['sizes']):.0f} jobs")
    print("  " + verdict.judge("dispatch round throughput (placement + claims, per round)", out["rates"], TARGET,
                               higher_is_better=True, unit="jobs/s").line())
    return out


if __name__ == "__main__":
    main()
