"""Pool throughput on real servers: jobs per minute with 1 and with 2 real ComfyUI servers, same work.

Usage: python benchmarks/pool_throughput.py [--jobs 24 --size 256]

Two real ComfyUI 0.3.75 servers (LocalWorker, on the CPU, the fixture ESRGAN ``tiny_x4.safetensors``
from .runtime/models) are started once. For each pool size the orchestrator is built fresh (its own
SQLite database and store): one warm-up job per server (model load, first-prompt costs), then ``--jobs``
upscale jobs, each on a different frame (so ComfyUI's cache never answers), are validated and written by
``job_app.submit_job`` and run by the real Dispatcher (placement, claims, executor, output ingest).
Throughput = jobs / (time from the dispatcher's first look to the last job done). Both servers run
during both measurements; on a machine with fewer cores than servers x torch threads the servers share
cores, so the 2-server figure measures the orchestrator's spreading, not two GPUs' worth of compute.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context  # noqa: E402
from orchestrator.comfy.worker import LocalWorker  # noqa: E402
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db.tables import Attempt  # noqa: E402
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402

MODEL = "tiny_x4.safetensors"
RUNTIME, MODELS = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"


@dataclass
class PoolRun:
    servers: int
    jobs: int
    succeeded: int
    seconds: float
    jobs_per_min: float
    per_server: dict[str, int]  # jobs each server ran


def frame(i: int, size: int) -> bytes:
    img = Image.new("RGB", (size, size * 3 // 4), (i % 256, (i * 7) % 256, (i * 13) % 256))
    for x in range(0, size, 4):
        img.putpixel((x, (x * (i + 1)) % (size * 3 // 4)), (255 - i % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run_jobs(ctx: Context, frames: list[bytes], start: int) -> list[str]:
    """Store each frame and submit one upscale job per frame; returns the job ids."""
    ids = []
    with ctx.db.session() as s:
        for i, data in enumerate(frames):
            art = artifact_app.store_input(s, ctx.store, data, f"f{start + i}.png")
            ids.append(job_app.submit_job(s, ctx.pool, "upscale-esrgan", {"image": art.id, "model": MODEL}).id)
    return ids


def wait_all(ctx: Context, ids: list[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with ctx.db.session() as s:
            states = [job_db.get_job(s, i).state for i in ids]
        if all(st.terminal for st in states):
            return sum(st.value == "SUCCEEDED" for st in states)
        time.sleep(0.02)
    raise TimeoutError(f"jobs not done within {timeout_s:.0f}s")


def measure(urls: list[str], jobs: int, size: int, home: Path, timeout_s: float) -> PoolRun:
    ctx = Context(Settings(home=home, comfy_servers=urls))
    try:
        ctx.start_pool()
        # warm-up: one job per server, both in flight at once (model load, first-prompt costs)
        warm = run_jobs(ctx, [frame(50_000 + k, size) for k in range(len(urls))], 50_000)
        ctx.start_dispatcher()
        wait_all(ctx, warm, timeout_s)
        ctx.dispatcher.stop()  # paused while the measured jobs are written, so all are queued at once
        ids = run_jobs(ctx, [frame(i + 1000 * len(urls), size) for i in range(jobs)], 1000 * len(urls))
        t0 = time.perf_counter()
        ctx.start_dispatcher(recover=False)
        ok = wait_all(ctx, ids, timeout_s)
        seconds = time.perf_counter() - t0
        with ctx.db.session() as s:
            per_server: dict[str, int] = {}
            for i in ids:
                for a in attempt_db.job_attempts(s, i):
                    if isinstance(a, Attempt) and a.state.value == "SUCCEEDED":
                        per_server[a.server] = per_server.get(a.server, 0) + 1
    finally:
        ctx.close()
    return PoolRun(len(urls), jobs, ok, round(seconds, 2), round(jobs / seconds * 60, 1), per_server)


def start_workers(count: int, root: Path) -> list[LocalWorker]:
    workers = [LocalWorker(RUNTIME, MODELS, root / f"comfy{i}", device="cpu") for i in range(count)]
    threads = [threading.Thread(target=w.start) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    down = [w for w in workers if not (w.proc and w.proc.poll() is None)]
    if down:
        for w in workers:
            w.stop()
        raise RuntimeError(f"{len(down)} ComfyUI server(s) did not start; logs under {root}")
    return workers


def main(argv: list[str] | None = None) -> list[PoolRun]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=24, help="measured jobs per pool size")
    ap.add_argument("--size", type=int, default=256, help="frame width in pixels (height 3/4 of it)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / MODEL).exists():
        raise SystemExit(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    root = Path(tempfile.mkdtemp(prefix="medialab-pool-"))
    workers = start_workers(2, root)
    try:
        urls = [w.url for w in workers]
        runs = [measure(urls[:n], args.jobs, args.size, root / f"home{n}", args.timeout) for n in (1, 2)]
    finally:
        for w in workers:
            w.stop()
    one, two = runs
    print(f"{args.jobs} ESRGAN x4 jobs ({args.size}x{args.size * 3 // 4} frames, each different), real ComfyUI "
          f"0.3.75 on the CPU, {os.cpu_count()} CPU cores shared by both servers and the orchestrator")
    for r in runs:
        print(f"{r.servers} server(s): {r.jobs_per_min:7.1f} jobs/min  ({r.succeeded}/{r.jobs} succeeded in "
              f"{r.seconds:.1f} s; per server {sorted(r.per_server.values(), reverse=True)})")
    print(f"ratio 2/1: {two.jobs_per_min / one.jobs_per_min:.2f} (ideal 2.00 with a GPU each; here the two "
          f"CPU servers share {os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return runs


if __name__ == "__main__":
    main()
