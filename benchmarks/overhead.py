"""Benchmark 1: the orchestrator's per-job overhead against a careful direct ComfyUI client, side by side.

Usage: python benchmarks/overhead.py [--jobs 30] [--small] [--timeline] [--code DIR] [--compare DIR] [--json FILE]

One real ComfyUI 0.3.75 on the CPU with the fixture ESRGAN x4 model; every job upscales a different
128x96 frame (so ComfyUI's cache never short-cuts one). The paths alternate job by job (the order rotates
every round, so no path always runs right after another), and noise on a busy machine hits them alike:

(a) direct: a careful script in this process with one websocket open for the whole run: POST /upload/image,
    POST /prompt, wait on the websocket for the prompt's end, GET /history, GET /view (the output's bytes in hand);
(b) orchestrator: the frontend's whole trip against a real ``medialab serve`` in its own process (SQLite and
    the local-disk store under a temp MEDIALAB_HOME, the benchmark's ComfyUI as its only server, an admin key
    from ``medialab keys create``): POST /v1/artifacts (the input), POST /v1/jobs, GET /v1/jobs/{id}/events
    (Server-Sent Events) to the final state, GET /v1/jobs/{id} (the output's id, as the studio does), then
    GET /v1/artifacts/{id}/content (the output's bytes in hand). ``--code DIR``: the checkout whose code that
    ``serve`` runs (default: this repository);
(c) with ``--compare DIR``: the same trip against a second ``serve`` process running the code in DIR (say a
    ``git archive <commit> | tar -x -C /tmp/before``), on the same ComfyUI, so before/after come from one run.

Verdicts (benchmarks/verdict.py: median of the samples with a bootstrap interval; MET / NOT MET / TOO NOISY
TO JUDGE) from interleaved pairs, never from one end-to-end p50: the pairwise ratio b/a of the wall times
(target <= 1.10) and the pairwise own-time difference b - a (own = wall less ComfyUI's execution, from
/history; target <= 10 ms, stretch 5 ms). The end-to-end added ms is judged from pairs too, for information.
``--timeline``: where path (b)'s milliseconds go, step by step. ``--json`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import verdict  # noqa: E402
from orchestrator.comfy.client import ComfyClient, output_files  # noqa: E402
from orchestrator.comfy.monitor import ServerMonitor  # noqa: E402
from orchestrator.comfy.worker import LocalWorker, free_port, stop_group  # noqa: E402
from orchestrator.core import templates as tpl  # noqa: E402
from orchestrator.runtime import library  # noqa: E402
from orchestrator.settings import PROJECT_ROOT  # noqa: E402

MODEL = "tiny_x4.safetensors"
TARGET_RATIO, TARGET_OWN_MS, STRETCH_OWN_MS = 1.10, 10.0, 5.0
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
# the timeline of one job of an API path: (key, what), in the trip's order; ms from the client's start
STEPS = [("upload", "upload answered"), ("submit", "submit answered"), ("created", "job created (created_at)"),
         ("claimed", "claimed (attempt started_at)"), ("submitted", "'submitted' event"),
         ("exec_start", "ComfyUI execution_start"), ("exec_end", "ComfyUI execution_success"),
         ("succeeded", "SUCCEEDED event (at)"), ("sse", "SSE event received"), ("job", "job fetched (output id)"),
         ("bytes", "output bytes in hand")]


def exec_stamps(entry: dict[str, Any]) -> tuple[float, float]:
    """(execution_start, execution_success) of a finished prompt, epoch seconds, from its /history entry."""
    stamps = {name: data.get("timestamp") for name, data in (entry.get("status") or {}).get("messages", [])}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        raise RuntimeError(f"no execution timestamps in the history entry: {entry.get('status')}")
    return stamps["execution_start"] / 1000, stamps["execution_success"] / 1000


def frame(i: int) -> bytes:
    """A different small PNG per job."""
    img = Image.new("RGB", (128, 96), (i % 256, (i * 7) % 256, (i * 13) % 256))
    img.putpixel((i % 128, (i // 128) % 96), (255 - i % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def epoch(iso: str) -> float:
    """An API datetime in epoch seconds (a naive one is UTC: SQLite drops the zone)."""
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass
class Trip:
    """One timed job: wall seconds, ComfyUI's execution seconds, and (API paths) what is read after the timing."""

    total_s: float
    exec_s: float = 0.0
    t0: float = 0.0  # epoch seconds at the client's start
    marks: dict[str, float] | None = None  # client-side step -> epoch seconds
    job_id: str = ""
    prompt_id: str = ""

    @property
    def own_s(self) -> float:
        return self.total_s - self.exec_s


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

    def job(self, data: bytes, _i: int) -> Trip:
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
        s, e = exec_stamps(entry)
        return Trip(elapsed, e - s, prompt_id=pid)

    def close(self) -> None:
        self.monitor.stop()
        self.client.close()


# -- (b), (c): the frontend's trip against a `medialab serve` process ------------------------------------
def serve_env(code: Path, home: Path, comfy_url: str) -> dict[str, str]:
    """This process's environment less every MEDIALAB_*, for code in ``code`` (first on PYTHONPATH, ahead of the
    venv's editable install) with its own home and the benchmark's ComfyUI as its only server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    return env | {"MEDIALAB_HOME": str(home), "MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url]),
                  "MEDIALAB_LOCAL_TRAINER": "false", "PYTHONPATH": str(code), "COLUMNS": "200"}


@dataclass
class Served:
    url: str
    key: str
    pid: int
    code: str  # where the serve process imports orchestrator from


@contextlib.contextmanager
def serve(code: Path, comfy_url: str, home: Path) -> Iterator[Served]:
    """``python -m orchestrator serve`` of the code in ``code``, in its own process group, until the block ends."""
    home.mkdir(parents=True)
    env, cwd = serve_env(code.resolve(), home, comfy_url), home.parent  # cwd: no stray .env is read
    cmd = [sys.executable, "-m", "orchestrator"]

    def cli(*args: str) -> str:
        r = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"medialab {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    where = subprocess.run([sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"], cwd=cwd,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    found = re.search(r"(mlk_\S+)", cli("keys", "create", "--role", "admin", "--name", "bench"))
    if not found:
        raise RuntimeError("no mlk_ key in the output of medialab keys create")
    port, log_path = free_port(), home.parent / f"serve-{home.name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port)], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"medialab serve ({code}) did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Served(url, found.group(1), proc.pid, str(Path(where).parent))
    finally:
        stop_group(proc)
        log.close()


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
    """What the frontend does: upload the input, submit, follow the job's SSE stream to its final state, fetch
    the job (its outputs), then the output's bytes."""

    def __init__(self, served: Served, comfy: ComfyClient) -> None:
        self.http = httpx.Client(base_url=served.url, headers={"X-API-Key": served.key}, timeout=120)
        self.comfy = comfy
        self.served = served

    def job(self, data: bytes, i: int) -> Trip:
        t0, start, marks = time.time(), time.perf_counter(), {}

        def mark(step: str) -> None:
            marks[step] = t0 + (time.perf_counter() - start)

        r = self.http.post("/v1/artifacts", files={"file": (f"f{i}.png", data, "image/png")})
        r.raise_for_status()
        mark("upload")
        r = self.http.post("/v1/jobs", json={"template": "upscale-esrgan",
                                             "params": {"image": r.json()["id"], "model": MODEL}})
        r.raise_for_status()
        mark("submit")
        job_id, state = r.json()["id"], None
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            resp.raise_for_status()
            for name, event in sse_events(resp):
                if name == "state" and event["state"] in FINAL:
                    state = event["state"]
                    break
        mark("sse")
        if state != "SUCCEEDED":
            raise RuntimeError(f"job {job_id} ended {state}: {self.http.get(f'/v1/jobs/{job_id}').text}")
        r = self.http.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        job = r.json()
        mark("job")
        r = self.http.get(f"/v1/artifacts/{job['outputs'][0]['id']}/content")
        r.raise_for_status()
        body = r.content
        mark("bytes")
        elapsed = time.perf_counter() - start
        if body[:4] != b"\x89PNG":
            raise RuntimeError(f"job {job_id}: the output is not a PNG ({len(body)} bytes)")
        return Trip(elapsed, t0=t0, marks=marks, job_id=job_id, prompt_id=job["attempts"][-1]["id"])

    def settle(self, trip: Trip) -> dict[str, float]:
        """After the timing: ComfyUI's execution into ``trip`` and the job's timeline (ms from the client's start)."""
        s, e = exec_stamps(self.comfy.history(trip.prompt_id) or {})
        trip.exec_s = e - s
        job = self.http.get(f"/v1/jobs/{trip.job_id}").json()
        events = self.http.get(f"/v1/jobs/{trip.job_id}/events", params={"follow": "false"}).json()
        out, lineage = job["outputs"], job["attempts"][-1]
        assert len(out) == 1 and out[0]["job_id"] == job["id"] and out[0]["attempt_id"] == lineage["id"], out
        stamps = dict(trip.marks or {})
        stamps |= {"created": epoch(job["created_at"]), "claimed": epoch(lineage["started_at"]),
                   "exec_start": s, "exec_end": e}
        for ev in events:
            if ev["kind"] == "info" and ev["reason"] == "submitted" and "submitted" not in stamps:
                stamps["submitted"] = epoch(ev["at"])
            if ev["kind"] == "state" and ev["state"] == "SUCCEEDED":
                stamps["succeeded"] = epoch(ev["at"])
        return {k: (v - trip.t0) * 1000 for k, v in stamps.items()}

    def close(self) -> None:
        self.http.close()


# -- figures -------------------------------------------------------------------------------------
def pct(xs: list[float], p: int) -> float:
    """The p-th percentile (inclusive method; the only value for a single sample)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def path_stats(trips: list[Trip]) -> dict[str, dict[str, float]]:
    def st(xs: list[float]) -> dict[str, float]:
        return {"p50": pct(xs, 50) * 1000, "p95": pct(xs, 95) * 1000}

    return {"total_ms": st([t.total_s for t in trips]), "exec_ms": st([t.exec_s for t in trips]),
            "own_ms": st([t.own_s for t in trips])}


def against(base: list[Trip], other: list[Trip]) -> dict[str, list[float]]:
    """The pairwise figures of ``other`` against ``base`` (the same round's jobs)."""
    ms = 1000
    return {"ratio": verdict.pairwise_ratios([t.total_s for t in base], [t.total_s for t in other]),
            "own_diff_ms": verdict.pairwise_differences([t.own_s * ms for t in base], [t.own_s * ms for t in other]),
            "total_diff_ms": verdict.pairwise_differences([t.total_s * ms for t in base],
                                                          [t.total_s * ms for t in other])}


def verdicts_vs_direct(p: str, pairs: dict[str, list[float]]) -> tuple[list[verdict.Verdict], list[verdict.Verdict]]:
    """(the verdicts that decide, the ones printed for information) of path ``p`` against the direct client."""
    judged = [verdict.judge(f"end-to-end ratio {p}/a (pairs)", pairs["ratio"], TARGET_RATIO, unit="x"),
              verdict.judge(f"own time added {p}-a (pairs)", pairs["own_diff_ms"], TARGET_OWN_MS, unit="ms")]
    info = [verdict.judge(f"own time added {p}-a, stretch", pairs["own_diff_ms"], STRETCH_OWN_MS, unit="ms"),
            verdict.judge(f"end-to-end added {p}-a (pairs)", pairs["total_diff_ms"], TARGET_OWN_MS, unit="ms")]
    return judged, info


def timeline_summary(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per step: the p50 of its ms from the client's start and the p50 of its gap from the step before."""
    out, prev = [], None
    for key, what in STEPS:
        xs = [r[key] for r in rows if key in r]
        gaps = [r[key] - r[prev] for r in rows if key in r and prev in r] if prev else xs
        out.append({"step": key, "what": what, "n": len(xs), "p50_ms": statistics.median(xs) if xs else None,
                    "gap_p50_ms": statistics.median(gaps) if gaps else None})
        prev = key
    return out


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(jobs: int, code: Path, compare: Path | None, timeline: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    res: dict[str, Any] = {"load_before": load(), "jobs": jobs}
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(LocalWorker(runtime, models, tmp / "comfy", device="cpu"))
        direct = DirectClient(worker.url)
        stack.callback(direct.close)
        clients: dict[str, Any] = {"a": direct}
        for p, where in [("b", code)] + ([("c", compare)] if compare else []):
            served = stack.enter_context(serve(where, worker.url, tmp / f"home-{p}"))
            res[f"code_{p}"] = served.code
            clients[p] = ApiClient(served, direct.client)
            stack.callback(clients[p].close)
        names = list(clients)
        for k, p in enumerate(names):  # warm-up: model load, first-prompt costs, connections, caches
            clients[p].job(frame(1_000_000 + k), 1_000_000 + k)
        trips: dict[str, list[Trip]] = {p: [] for p in names}
        serving = {p: psutil.Process(clients[p].served.pid) for p in names if p != "a"}
        cpu0 = {p: _cpu_s(proc) for p, proc in serving.items()}
        for i in range(jobs):  # interleaved, the order rotating each round: drift on a busy machine hits all alike
            for k in range(len(names)):
                p = names[(i + k) % len(names)]
                n = len(names) * i + k
                trips[p].append(clients[p].job(frame(n), n))
        res["load_after"] = load()
        res["serve_cpu_ms_per_job"] = {p: (_cpu_s(proc) - cpu0[p]) * 1000 / max(jobs, 1) for p, proc in serving.items()}
        timelines = {p: [clients[p].settle(t) for t in trips[p]] for p in names if p != "a"}  # after the timing
    res["stats"] = {p: path_stats(ts) for p, ts in trips.items()}
    res["pairs"] = {f"{p}_vs_a": against(trips["a"], trips[p]) for p in names if p != "a"}
    judged, info = verdicts_vs_direct("b", res["pairs"]["b_vs_a"])
    if compare:
        res["pairs"]["c_vs_b"] = cb = against(trips["b"], trips["c"])
        c_judged, c_info = verdicts_vs_direct("c", res["pairs"]["c_vs_a"])
        info += c_judged + c_info + [
            verdict.judge("end-to-end ratio c/b (above 1: b faster)", cb["ratio"], 1.0, higher_is_better=True,
                          unit="x"),
            verdict.judge("own time c-b (above 0: b cheaper)", cb["own_diff_ms"], 0.0, higher_is_better=True,
                          max_width=math.inf, unit="ms")]
    res["verdicts"] = [v.as_dict() for v in judged]
    res["info_verdicts"] = [v.as_dict() for v in info]
    res["overall"] = verdict.overall(judged)
    res["lines"] = [v.line() for v in judged] + [v.line() for v in info]
    res["raw_ms"] = {p: [[t.total_s * 1000, t.exec_s * 1000] for t in ts] for p, ts in trips.items()}
    if timeline:
        res["timeline"] = {p: {"steps": timeline_summary(rows), "raw": rows} for p, rows in timelines.items()}
    res["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    res["machine"] = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, " \
                     f"Python {platform.python_version()})"
    return res


def report(res: dict[str, Any]) -> str:
    label = {"a": "(a) direct script", "b": "(b) serve (--code)", "c": "(c) serve (--compare)"}
    lines = [f"{res['date']} on {res['machine']}",
             f"jobs per path: {res['jobs']} (interleaved, order rotating), ESRGAN x4 fixture on a 128x96 frame, "
             "ComfyUI on the CPU",
             f"load average before: {res['load_before']}, after: {res['load_after']}"]
    lines += [f"code of ({p}): {res[f'code_{p}']}" for p in ("b", "c") if f"code_{p}" in res]
    for p, s in res["stats"].items():
        t, o, e = s["total_ms"], s["own_ms"], s["exec_ms"]
        lines.append(f"{label[p]:22}: wall p50 {t['p50']:7.1f} ms  p95 {t['p95']:7.1f} ms   own p50 {o['p50']:6.1f} "
                     f"ms  p95 {o['p95']:6.1f} ms   (ComfyUI's execution p50 {e['p50']:.1f} ms)")
    for p, ms in (res.get("serve_cpu_ms_per_job") or {}).items():
        lines.append(f"CPU of the serve process of ({p}) per job (user + system, its threads together): {ms:.1f} ms")
    lines.append("verdicts (median of the interleaved pairs, 90% bootstrap interval of the median):")
    lines += [f"  {line}" for line in res["lines"][:len(res["verdicts"])]]
    lines.append("for information:")
    lines += [f"  {line}" for line in res["lines"][len(res["verdicts"]):]]
    lines.append(f"overall (ratio b/a <= {TARGET_RATIO:.2f} and own time added <= {TARGET_OWN_MS:.0f} ms): "
                 f"{res['overall']}")
    for p, tl in (res.get("timeline") or {}).items():
        lines.append(f"timeline of ({p}), ms from the client's start (p50 over {res['jobs']} jobs; one clock, "
                     "time.time(); a negative gap: the step overlaps the one before):")
        lines += [f"  {s['what']:30} {_ms(s['p50_ms'])}   gap {_ms(s['gap_p50_ms'])}" for s in tl["steps"]]
    return "\n".join(lines)


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _ms(x: float | None) -> str:
    return "      -" if x is None else f"{x:7.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30, help="jobs per path (default 30)")
    ap.add_argument("--small", action="store_true", help="3 jobs per path (CI)")
    ap.add_argument("--code", type=Path, default=PROJECT_ROOT, help="checkout that path (b)'s serve runs")
    ap.add_argument("--compare", type=Path, help="checkout of a path (c): a second serve, interleaved with (b)")
    ap.add_argument("--timeline", action="store_true", help="where each API job's milliseconds go, step by step")
    ap.add_argument("--json", type=Path, help="write the figures (raw timings too) to this file")
    args = ap.parse_args(argv)
    for d in filter(None, (args.code, args.compare)):
        if not (d / "orchestrator" / "__main__.py").is_file():
            ap.error(f"{d}: no orchestrator/__main__.py (a checkout of this project)")
    res = run(3 if args.small else args.jobs, args.code, args.compare, args.timeline)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
