"""Benchmark 1: the orchestrator's per-job overhead against a careful direct ComfyUI client, side by side.

Usage: python benchmarks/overhead.py [--jobs 50] [--small] [--json FILE] [--profile FILE]

One real ComfyUI 0.3.75 on the CPU with the fixture ESRGAN x4 model; every job upscales a different
128x96 frame (so ComfyUI's cache never short-cuts one). The two paths alternate job by job, so noise on a
busy machine hits both alike:

(a) direct: a careful script with one websocket open for the whole run: POST /upload/image, POST /prompt,
    wait on the websocket for the prompt's end, GET /history, GET /view (the output's bytes in hand);
(b) orchestrator: the real HTTP API (the FastAPI app served by uvicorn in this process, with its real
    dispatcher, pool and executor on SQLite and the local-disk store): POST /v1/artifacts (the input),
    POST /v1/jobs, then follow the job the way the frontend does, over Server-Sent Events
    (GET /v1/jobs/{id}/events), until its SUCCEEDED event: the output is stored and its lineage written.

Prints p50/p95 of both, their ratio and the added milliseconds per job (targets: at most 15 ms p50 added,
ratio at most 1.10); ``--json`` writes the raw figures. ``--profile`` writes a yappi profile of every
orchestrator thread (pstat format) while path (b) runs.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.api.app import create_app  # noqa: E402
from orchestrator.app import keys as key_app
from orchestrator.comfy.client import ComfyClient, output_files  # noqa: E402
from orchestrator.comfy.monitor import ServerMonitor  # noqa: E402
from orchestrator.comfy.worker import LocalWorker  # noqa: E402
from orchestrator.core import templates as tpl  # noqa: E402
from orchestrator.runtime import library  # noqa: E402
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402

MODEL = "tiny_x4.safetensors"
TARGET_ADDED_MS, TARGET_RATIO = 15.0, 1.10


def comfy_exec_s(entry: dict[str, Any]) -> float:
    """ComfyUI's own execution time of a finished prompt (execution_start to execution_success, from its
    /history status messages): what both paths share, so ``total - exec`` is each path's own cost."""
    stamps = {name: data.get("timestamp") for name, data in (entry.get("status") or {}).get("messages", [])}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        raise RuntimeError(f"no execution timestamps in the history entry: {entry.get('status')}")
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def frame(i: int) -> bytes:
    """A different small PNG per job."""
    img = Image.new("RGB", (128, 96), (i % 256, (i * 7) % 256, (i * 13) % 256))
    img.putpixel((i % 128, (i // 128) % 96), (255 - i % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- (a) the direct client -------------------------------------------------------------------------
class DirectClient:
    """What a careful script does against one ComfyUI: one websocket for its client id, kept open (the
    orchestrator's own ``ServerMonitor``; each prompt's events through a subscription made before its submit)."""

    def __init__(self, url: str) -> None:
        self.client = ComfyClient(url)
        self.monitor = ServerMonitor(url, uuid.uuid4().hex).start()
        if not self.monitor.connected.wait(30):
            raise RuntimeError(f"no websocket to {url} within 30 s")
        self.template = tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "upscale-esrgan")

    def job(self, data: bytes) -> tuple[float, float]:
        """(seconds from upload to the output's bytes in hand, ComfyUI's execution seconds)."""
        start = time.perf_counter()
        pid = str(uuid.uuid4())
        name = self.client.upload(data, f"{pid}.png", subfolder="bench")
        with self.monitor.subscribe(pid) as events:  # only this prompt's events
            self.client.submit(tpl.bind(self.template, {"image": name, "model": MODEL}), pid, self.monitor.client_id)
            while True:
                e = events.recv(120)
                if e is None:
                    raise TimeoutError(f"prompt {pid}: no event for 120 s")
                d = e.get("data") or {}
                if e["type"] == "executing" and d.get("node") is None:
                    break
                if e["type"] == "execution_error":
                    raise RuntimeError(f"prompt {pid} failed: {d.get('exception_message')}")
        entry = self.client.history(pid) or {}
        size = sum(len(b) for ui in entry["outputs"].values() for ref in output_files(ui)
                   for b in self.client.stream_view(ref))
        elapsed = time.perf_counter() - start
        assert size > 0
        return elapsed, comfy_exec_s(entry)

    def close(self) -> None:
        self.monitor.stop()
        self.client.close()


# -- (b) the orchestrator through its HTTP API ----------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_api(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """The FastAPI app (with its dispatcher) under uvicorn in a thread; yields (base URL, run key, app)."""
    app = create_app(settings, dispatch=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    with app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "bench", ["run", "export"])
    try:
        yield f"http://127.0.0.1:{port}", key, app
    finally:
        server.should_exit = True
        thread.join(60)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of each Server-Sent Event of a streaming response."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class ApiClient:
    """What the frontend does: upload the input, submit, follow the job's SSE stream to its final state."""

    def __init__(self, base: str, key: str, comfy: ComfyClient) -> None:
        self.http = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120)
        self.comfy = comfy
        self.last_job: dict[str, Any] = {}

    def job(self, data: bytes, i: int) -> tuple[float, float]:
        """(seconds from the input upload to the SUCCEEDED event, ComfyUI's execution seconds)."""
        start = time.perf_counter()
        r = self.http.post("/v1/artifacts", files={"file": (f"f{i}.png", data, "image/png")})
        r.raise_for_status()
        r = self.http.post("/v1/jobs", json={"template": "upscale-esrgan",
                                             "params": {"image": r.json()["id"], "model": MODEL}})
        r.raise_for_status()
        job_id, state = r.json()["id"], None
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            resp.raise_for_status()
            for name, event in sse_events(resp):
                if name == "state" and event["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    state = event["state"]
                    break
        elapsed = time.perf_counter() - start
        if state != "SUCCEEDED":
            raise RuntimeError(f"job {job_id} ended {state}: {self.http.get(f'/v1/jobs/{job_id}').text}")
        self.last_job = job = self.http.get(f"/v1/jobs/{job_id}").json()  # not timed from here on
        return elapsed, comfy_exec_s(self.comfy.history(job["attempts"][-1]["id"]) or {})

    def check_last(self) -> dict[str, Any]:
        """The last job's output and lineage, as the API reports them (outside the timing)."""
        job = self.last_job
        (out,) = job["outputs"]
        assert out["job_id"] == job["id"] and out["attempt_id"] == job["attempts"][0]["id"], out
        assert self.http.get(f"/v1/artifacts/{out['id']}/content").content[:4] == b"\x89PNG"
        return job

    def close(self) -> None:
        self.http.close()


# -- figures -------------------------------------------------------------------------------------
def pct(xs: list[float], p: int) -> float:
    """The p-th percentile (inclusive method; the only value for a single sample)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def summary(direct: list[tuple[float, float]], orch: list[tuple[float, float]]) -> dict[str, Any]:
    """End-to-end p50/p95 of both paths, added ms and ratio; the same for each path's own time (its
    wall time less ComfyUI's execution), which the noise of a busy machine's ComfyUI does not blur."""
    def stats(xs: list[float]) -> dict[str, float]:
        return {"p50": pct(xs, 50) * 1000, "p95": pct(xs, 95) * 1000}

    a_total, b_total = [t for t, _ in direct], [t for t, _ in orch]
    a_own, b_own = [t - e for t, e in direct], [t - e for t, e in orch]
    d, o = stats(a_total), stats(b_total)
    added, ratio = o["p50"] - d["p50"], o["p50"] / d["p50"]
    own_a, own_b = stats(a_own), stats(b_own)
    return {"jobs": len(direct), "direct_ms": d, "orchestrator_ms": o,
            "added_ms_p50": added, "added_ms_p95": o["p95"] - d["p95"], "ratio_p50": ratio,
            "direct_own_ms": own_a, "orchestrator_own_ms": own_b,
            "added_own_ms_p50": own_b["p50"] - own_a["p50"],
            "comfy_exec_ms_p50": {"direct": pct([e for _, e in direct], 50) * 1000,
                                  "orchestrator": pct([e for _, e in orch], 50) * 1000},
            "target_added_ms": TARGET_ADDED_MS, "target_ratio": TARGET_RATIO,
            "met": added <= TARGET_ADDED_MS and ratio <= TARGET_RATIO,
            "raw_ms": {"direct": [[t * 1000, e * 1000] for t, e in direct],
                       "orchestrator": [[t * 1000, e * 1000] for t, e in orch]}}


def report(res: dict[str, Any]) -> str:
    d, o, da, ob = res["direct_ms"], res["orchestrator_ms"], res["direct_own_ms"], res["orchestrator_own_ms"]
    ex = res["comfy_exec_ms_p50"]
    return "\n".join([
        f"{res['date']} on {res['machine']}",
        f"jobs per path: {res['jobs']} (interleaved), ESRGAN x4 fixture on a 128x96 frame, ComfyUI on the CPU",
        f"(a) direct client : p50 {d['p50']:7.1f} ms   p95 {d['p95']:7.1f} ms   own (less ComfyUI's execution, "
        f"p50 {ex['direct']:.1f} ms): p50 {da['p50']:6.1f} ms  p95 {da['p95']:6.1f} ms",
        f"(b) orchestrator  : p50 {o['p50']:7.1f} ms   p95 {o['p95']:7.1f} ms   own (less ComfyUI's execution, "
        f"p50 {ex['orchestrator']:.1f} ms): p50 {ob['p50']:6.1f} ms  p95 {ob['p95']:6.1f} ms",
        "    (b) is the HTTP API (uvicorn, real dispatcher) followed over Server-Sent Events to SUCCEEDED",
        f"added per job     : p50 {res['added_ms_p50']:+.1f} ms   p95 {res['added_ms_p95']:+.1f} ms   "
        f"ratio p50 {res['ratio_p50']:.3f};   own time added p50 {res['added_own_ms_p50']:+.1f} ms",
        f"targets           : <= {TARGET_ADDED_MS:.0f} ms p50 added and ratio <= {TARGET_RATIO:.2f}: "
        + ("MET" if res["met"] else "NOT MET")])


def run(jobs: int, profile: Path | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    with LocalWorker(runtime, models, tmp / "comfy", device="cpu") as worker:
        settings = Settings(home=tmp / "home", comfy_servers=[worker.url], local_trainer=False)
        with serve_api(settings) as (base, key, _app):
            direct = DirectClient(worker.url)
            api = ApiClient(base, key, direct.client)
            try:
                direct.job(frame(1_000_000))  # warm-up: model load, first-prompt costs, connections
                api.job(frame(1_000_001), 1_000_001)
                prof = start_profile() if profile else None
                a, b = [], []
                for i in range(jobs):  # interleaved, so drift on a busy machine hits both alike
                    a.append(direct.job(frame(2 * i)))
                    b.append(api.job(frame(2 * i + 1), 2 * i + 1))
                if prof and profile:
                    stop_profile(prof, profile)
                api.check_last()
            finally:
                direct.close()
                api.close()
    res = summary(a, b)
    res["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    res["machine"] = f"{platform.node()} ({platform.machine()}, {_cores()} cores, Python {platform.python_version()})"
    return res


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def start_profile() -> Any:
    import yappi  # optional: pip install yappi

    yappi.set_clock_type("wall")
    yappi.start()
    return yappi


def stop_profile(yappi: Any, path: Path) -> None:
    yappi.stop()
    yappi.get_func_stats().save(str(path), type="pstat")
    yappi.clear_stats()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50, help="jobs per path (default 50)")
    ap.add_argument("--small", action="store_true", help="3 jobs per path (CI)")
    ap.add_argument("--json", type=Path, help="write the figures (raw timings too) to this file")
    ap.add_argument("--profile", type=Path, help="yappi profile (pstat) of the orchestrator while (b) runs")
    args = ap.parse_args(argv)
    res = run(3 if args.small else args.jobs, args.profile)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
