"""Issue 13: a batch of upscales through the service against the same work run one by one by a direct script.

Usage: python benchmarks/batch_vs_script.py [--images 200] [--size 96] [--repeat N] [--service-first] [--json FILE]
       [--keep]

One real ComfyUI 0.3.75 on the CPU (LocalWorker, the fixture ESRGAN ``tiny_x4.safetensors`` from
.runtime/models) serves both sides, one after the other; each side upscales its own ``--images`` distinct
``--size`` x ``--size`` random-noise PNGs (every one its own sha256, so neither ComfyUI's cache nor the
service's idempotency keys ever answer), after one untimed warm-up image each.

(a) direct script: what a person writes without us. The upscale-esrgan graph is bound once by the
    orchestrator's own binding code (untimed), then for each image in turn: POST /upload/image, POST /prompt
    (the graph with that image's name), wait on a websocket kept open for the prompt's end, GET /history for
    the output's name, GET /view and write the bytes to disk. No overlap.
(b) service: a real ``medialab serve`` process (own MEDIALAB_HOME in a temp dir, SQLite, local-disk store,
    the ComfyUI registered through MEDIALAB_COMFY_SERVERS, a run+export key from ``medialab keys create``),
    then ``medialab batch run upscale-esrgan <folder> --set model=tiny_x4.safetensors --out <dir>`` as a
    subprocess (MEDIALAB_URL / MEDIALAB_API_KEY), timed from its start to its exit: every input hashed and
    uploaded, the batch posted, every output downloaded and manifest.jsonl written.

Both sides must produce ``--images`` outputs. Printed: load average, both wall times, images/s, the ratio,
and where each side's time went: ComfyUI's own execution (execution_start to execution_success of every
prompt, from /history, read after the timing), the idle gaps between prompts, and for (b) the CLI's phases
(process start to the batch's creation, i.e. hashing + uploads; the tail from the last prompt's end to the
exit, i.e. downloads left after the last poll), how many outputs were on disk when ComfyUI finished, and
the CPU seconds of ComfyUI, the script, ``medialab serve`` and ``medialab batch run`` (they share the cores).

Verdict (benchmarks/verdict.py): the batch's throughput over the script's (direct wall / batch wall) against
issue 13's target of at least 1.2x. Each run is one pair, so ``--repeat N`` runs N pairs (each on a fresh
ComfyUI, the side that goes first alternating from run to run) and judges the N ratios: the median with a
bootstrap interval, MET / NOT MET / TOO NOISY TO JUDGE. One pair is a single sample: its verdict says nothing
about noise (the line says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websocket  # websocket-client, installed with ComfyUI's requirements
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import verdict  # noqa: E402
from orchestrator.comfy.worker import LocalWorker, free_port, stop_group  # noqa: E402
from orchestrator.core import templates as tpl  # noqa: E402
from orchestrator.runtime import library  # noqa: E402
from orchestrator.settings import PROJECT_ROOT  # noqa: E402

MODEL = "tiny_x4.safetensors"
RUNTIME, MODELS = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
MEDIALAB = Path(sys.executable).parent / "medialab"
TARGET_SPEEDUP = 1.2  # issue 13: the batch at least 1.2x the script's throughput


def noise_png(path: Path, seed: int, size: int) -> None:
    """A ``size`` x ``size`` RGB PNG of seeded random noise (a different sha256 per seed)."""
    data = random.Random(seed).randbytes(size * size * 3)
    Image.frombytes("RGB", (size, size), data).save(path, format="PNG")


def make_images(folder: Path, first_seed: int, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"img{i:04d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        noise_png(p, first_seed + i, size)
    return paths


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (its waited-for children too), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def exec_window(entry: dict[str, Any]) -> tuple[float, float]:
    """(execution_start, execution_success) of a finished prompt in epoch seconds, from its /history entry."""
    stamps = {name: data.get("timestamp") for name, data in (entry.get("status") or {}).get("messages", [])}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        raise RuntimeError(f"no execution timestamps in the history entry: {entry.get('status')}")
    return stamps["execution_start"] / 1000, stamps["execution_success"] / 1000


def comfy_figures(windows: list[tuple[float, float]], t0: float, t1: float) -> dict[str, Any]:
    """ComfyUI's busy time within [t0, t1], the idle gaps between consecutive prompts, the first start and
    the last end relative to t0."""
    windows = sorted(windows)
    busy = sum(e - s for s, e in windows)
    gaps = [max(0.0, b[0] - a[1]) for a, b in zip(windows, windows[1:], strict=False)]
    return {"exec_s": busy, "busy_share": busy / (t1 - t0), "exec_p50_ms": statistics.median(e - s for s, e in windows)
            * 1000, "gap_p50_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
            "gap_sum_s": sum(gaps), "gaps_over_100ms": sum(g > 0.1 for g in gaps),
            "gap_max_ms": max(gaps, default=0.0) * 1000, "first_start_s": windows[0][0] - t0,
            "last_end_s": windows[-1][1] - t0,
            "tail_s": t1 - windows[-1][1]}


# -- (a) the direct script ------------------------------------------------------------------------------------
class DirectScript:
    """One websocket for its client id, kept open; each image uploaded, prompted, waited for and fetched in turn."""

    def __init__(self, url: str, graph: dict[str, Any], image_node: str) -> None:
        self.url, self.graph, self.image_node = url, graph, image_node
        self.http = httpx.Client(base_url=url, timeout=120)
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws{url[4:]}/ws?clientId={self.client_id}", timeout=300)
        self.prompt_ids: list[str] = []

    def one(self, path: Path, out: Path) -> None:
        with path.open("rb") as f:
            r = self.http.post("/upload/image", files={"image": (path.name, f, "image/png")},
                               data={"type": "input", "subfolder": "direct", "overwrite": "true"})
        r.raise_for_status()
        up = r.json()
        graph = json.loads(json.dumps(self.graph))
        graph[self.image_node]["inputs"]["image"] = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") \
            else up["name"]
        r = self.http.post("/prompt", json={"prompt": graph, "client_id": self.client_id})
        r.raise_for_status()
        pid = r.json()["prompt_id"]
        while True:  # ComfyUI's websockets_api_example: the prompt is done at "executing" with node None
            msg = self.ws.recv()
            if not isinstance(msg, str):
                continue  # binary previews
            event = json.loads(msg)
            data = event.get("data") or {}
            if data.get("prompt_id") != pid:
                continue
            if event["type"] == "executing" and data.get("node") is None:
                break
            if event["type"] == "execution_error":
                raise RuntimeError(f"prompt {pid} failed: {data.get('exception_message')}")
        entry = self.http.get(f"/history/{pid}").json()[pid]
        for node_out in entry["outputs"].values():
            for img in node_out.get("images", []):
                r = self.http.get("/view", params={"filename": img["filename"], "subfolder": img["subfolder"],
                                                   "type": img["type"]})
                r.raise_for_status()
                (out / f"{path.stem}__{img['filename'].rsplit('/', 1)[-1]}").write_bytes(r.content)
        self.prompt_ids.append(pid)

    def close(self) -> None:
        self.ws.close()
        self.http.close()


def run_direct(url: str, images: list[Path], warm: Path, out: Path, comfy_pid: int) -> dict[str, Any]:
    template = tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "upscale-esrgan")
    graph = tpl.bind(template, {"image": "placeholder.png", "model": MODEL})  # once, untimed
    image_node = next(k for k, n in graph.items() if n.get("_meta", {}).get("title") == "Input image")
    script = DirectScript(url, graph, image_node)
    try:
        warm_out = out.parent / "direct-warm"
        warm_out.mkdir()
        script.one(warm, warm_out)  # model load, first-prompt costs, connections
        script.prompt_ids.clear()
        out.mkdir()
        comfy_cpu, own_cpu = cpu_s(comfy_pid), time.process_time()
        t0 = time.time()
        for p in images:
            script.one(p, out)
        t1 = time.time()
        own_cpu, comfy_cpu = time.process_time() - own_cpu, cpu_s(comfy_pid) - comfy_cpu
        windows = [exec_window(script.http.get(f"/history/{pid}").json()[pid]) for pid in script.prompt_ids]
    finally:
        script.close()
    return {"wall_s": t1 - t0, "outputs": sum(1 for p in out.iterdir() if p.suffix == ".png"),
            "comfy": comfy_figures(windows, t0, t1), "cpu_s": {"comfyui": comfy_cpu, "script": own_cpu}}


# -- (b) the service ------------------------------------------------------------------------------------------
def cli_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment less every MEDIALAB_*, with ``home`` as MEDIALAB_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    return env | (extra or {}) | {"MEDIALAB_HOME": str(home), "COLUMNS": "200"}


def medialab_cmd() -> list[str]:
    return [str(MEDIALAB)] if MEDIALAB.exists() else [sys.executable, "-m", "orchestrator"]


def medialab(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    r = subprocess.run([*medialab_cmd(), *args], cwd=home.parent, env=cli_env(home, env), capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"medialab {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


@contextlib.contextmanager
def served(home: Path, comfy_url: str) -> Iterator[tuple[str, int]]:
    """``medialab serve`` in its own process group on a free port until the block ends; yields its URL and pid."""
    port = free_port()
    log = (home.parent / "serve.log").open("w")
    proc = subprocess.Popen([*medialab_cmd(), "serve", "--port", str(port)], cwd=home.parent,
                            env=cli_env(home, {"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("medialab serve did not start:\n" + (home.parent / "serve.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        stop_group(proc)
        log.close()


def batch_run(operator: Path, url: str, key: str, folder: Path, out: Path) -> tuple[float, float, str, str]:
    """``medialab batch run`` as a subprocess: (start, exit) in epoch seconds, the batch id, its stdout."""
    env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
    t0 = time.time()
    r = subprocess.run([*medialab_cmd(), "batch", "run", "upscale-esrgan", str(folder), "--set", f"model={MODEL}",
                        "--out", str(out)], cwd=operator.parent, env=cli_env(operator, env), capture_output=True,
                       text=True, timeout=3600)
    t1 = time.time()
    if r.returncode != 0:
        raise RuntimeError(f"medialab batch run exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    found = re.search(r"batch (\w{32}) on ", r.stdout)
    if not found:
        raise RuntimeError(f"no batch id in the CLI's output:\n{r.stdout[-3000:]}")
    return t0, t1, found.group(1), r.stdout


def run_service(comfy_url: str, images: list[Path], warm: Path, tmp: Path, comfy_pid: int) -> dict[str, Any]:
    home = tmp / "service" / ".medialab"
    home.parent.mkdir(parents=True)
    medialab(home, "init")
    created = medialab(home, "keys", "create", "--role", "run", "--role", "export", "--name", "bench")
    key = re.search(r"(mlk_\S+)", created).group(1)  # type: ignore[union-attr]
    operator = tmp / "operator" / ".medialab"
    operator.parent.mkdir(parents=True)
    out = tmp / "batch-out"
    with served(home, comfy_url) as (url, serve_pid):
        warm_dir = tmp / "batch-warm-in"
        warm_dir.mkdir()
        shutil.copy(warm, warm_dir / warm.name)
        batch_run(operator, url, key, warm_dir, tmp / "batch-warm-out")  # first-job costs, untimed
        cpu = (cpu_s(comfy_pid), cpu_s(serve_pid), children_cpu_s())
        t0, t1, batch_id, stdout = batch_run(operator, url, key, images[0].parent, out)
        cpu = (cpu_s(comfy_pid) - cpu[0], cpu_s(serve_pid) - cpu[1], children_cpu_s() - cpu[2])
        # everything below is read after the timing
        http = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)
        created_at = datetime.fromisoformat(http.get(f"/v1/batches/{batch_id}").json()["created_at"])
        jobs = http.get(f"/v1/batches/{batch_id}/jobs", params={"limit": 1000}).json()
        prompts = [http.get(f"/v1/jobs/{j['id']}").json()["attempts"][-1]["id"] for j in jobs]
        http.close()
    comfy = httpx.Client(base_url=comfy_url, timeout=60)
    windows = [exec_window(comfy.get(f"/history/{pid}").json()[pid]) for pid in prompts]
    comfy.close()
    pngs = [p for p in out.iterdir() if p.suffix == ".png"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    figures = comfy_figures(windows, t0, t1)
    last_end = max(e for _, e in windows)
    return {"wall_s": t1 - t0, "outputs": len(pngs), "manifest_lines": len(manifest),
            "succeeded": sum(m["state"] == "SUCCEEDED" for m in manifest), "batch": batch_id,
            "created_after_s": created_at.replace(tzinfo=created_at.tzinfo or UTC).timestamp() - t0,
            "on_disk_at_last_end": sum(p.stat().st_mtime <= last_end for p in pngs),
            "first_download_s": min(p.stat().st_mtime for p in pngs) - t0, "comfy": figures,
            "cpu_s": {"comfyui": cpu[0], "service": cpu[1], "cli": cpu[2]},
            "cli_tail": stdout.strip().splitlines()[-3:]}


# -- figures --------------------------------------------------------------------------------------------------
def report(res: dict[str, Any]) -> str:
    n, a, b = res["images"], res["direct"], res["service"]
    ca, cb = a["comfy"], b["comfy"]
    lines = [
        f"{res['date']} on {res['machine']}",
        f"{n} distinct {res['size']}x{res['size']} noise PNGs per side, ESRGAN x4 fixture, one ComfyUI on the CPU",
        f"load average before: {res['load_before']}, between: {res['load_between']}, after: {res['load_after']}",
        f"(a) direct script : {a['wall_s']:7.1f} s  {n / a['wall_s']:6.2f} images/s  outputs {a['outputs']}/{n}",
        f"(b) service batch : {b['wall_s']:7.1f} s  {n / b['wall_s']:6.2f} images/s  outputs {b['outputs']}/{n}, "
        f"manifest {b['manifest_lines']} lines ({b['succeeded']} SUCCEEDED)",
        f"ratio direct/batch: {a['wall_s'] / b['wall_s']:.2f} (above 1: the batch is faster); ran "
        + ("service first" if res["service_first"] else "direct first"),
        f"own time (wall less ComfyUI's execution): (a) {a['wall_s'] - ca['exec_s']:.1f} s, "
        f"(b) {b['wall_s'] - cb['exec_s']:.1f} s",
        "where the time went (ComfyUI's own execution from /history; gaps = ComfyUI idle between prompts):",
        f"  (a) exec {ca['exec_s']:.1f} s ({ca['busy_share']:.0%} of the wall), exec p50 {ca['exec_p50_ms']:.0f} ms, "
        f"gap p50 {ca['gap_p50_ms']:.0f} ms, gaps total {ca['gap_sum_s']:.1f} s ({ca['gaps_over_100ms']} over 100 ms, "
        f"max {ca['gap_max_ms']:.0f} ms)",
        f"  (b) exec {cb['exec_s']:.1f} s ({cb['busy_share']:.0%} of the wall), exec p50 {cb['exec_p50_ms']:.0f} ms, "
        f"gap p50 {cb['gap_p50_ms']:.0f} ms, gaps total {cb['gap_sum_s']:.1f} s ({cb['gaps_over_100ms']} over 100 ms, "
        f"max {cb['gap_max_ms']:.0f} ms)",
        f"  (b) CLI start -> batch created (hash + {n} uploads + POST): {b['created_after_s']:.1f} s; first prompt "
        f"executing at {cb['first_start_s']:.1f} s; last prompt done at {cb['last_end_s']:.1f} s; exit "
        f"{cb['tail_s']:.1f} s later",
        f"  (b) first output on disk at {b['first_download_s']:.1f} s; {b['on_disk_at_last_end']}/{n} outputs on disk "
        "when the last prompt ended",
        f"CPU seconds: (a) ComfyUI {a['cpu_s']['comfyui']:.1f}, script {a['cpu_s']['script']:.1f};  (b) ComfyUI "
        f"{b['cpu_s']['comfyui']:.1f}, medialab serve {b['cpu_s']['service']:.1f}, medialab batch run "
        f"{b['cpu_s']['cli']:.1f}  ({os.cpu_count()} cores)"]
    return "\n".join(lines)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(n: int, size: int, keep: bool, service_first: bool = False) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="medialab-batchbench-"))
    try:
        direct_imgs = make_images(tmp / "direct-in", 1_000_000, n, size)
        batch_imgs = make_images(tmp / "batch-in", 2_000_000, n, size)
        warm_a, warm_b = tmp / "warm-a.png", tmp / "warm-b.png"
        noise_png(warm_a, 1, size)
        noise_png(warm_b, 2, size)
        res: dict[str, Any] = {"images": n, "size": size, "service_first": service_first, "load_before": load()}
        with LocalWorker(RUNTIME, MODELS, tmp / "comfy", device="cpu") as worker:
            pid = worker.proc.pid if worker.proc else 0
            if service_first:
                res["service"] = run_service(worker.url, batch_imgs, warm_b, tmp, pid)
                res["load_between"] = load()
                res["direct"] = run_direct(worker.url, direct_imgs, warm_a, tmp / "direct-out", pid)
            else:
                res["direct"] = run_direct(worker.url, direct_imgs, warm_a, tmp / "direct-out", pid)
                res["load_between"] = load()
                res["service"] = run_service(worker.url, batch_imgs, warm_b, tmp, pid)
        res["load_after"] = load()
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["ratio"] = res["direct"]["wall_s"] / res["service"]["wall_s"]
    res["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    res["machine"] = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, Python " \
                     f"{platform.python_version()})"
    for side in ("direct", "service"):
        if res[side]["outputs"] != n:
            raise RuntimeError(f"{side}: {res[side]['outputs']} outputs, {n} expected")
    if res["service"]["succeeded"] != n:
        raise RuntimeError(f"service: {res['service']['succeeded']} SUCCEEDED in manifest.jsonl, {n} expected")
    return res


def judge(ratios: list[float]) -> verdict.Verdict:
    """The batch's throughput over the script's, one ratio per pair, against at least 1.2x."""
    return verdict.judge("batch throughput / script throughput (pairs)", ratios, TARGET_SPEEDUP,
                         higher_is_better=True, unit="x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs ``--repeat`` pairs; returns the last run's figures with ``runs`` (every run), ``ratios`` and
    ``verdict`` added."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="images per side (default 200)")
    ap.add_argument("--size", type=int, default=96, help="input width and height in pixels (default 96)")
    ap.add_argument("--repeat", type=int, default=1, help="pairs to run and judge (default 1)")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (inputs, outputs, logs)")
    ap.add_argument("--service-first", action="store_true", help="run the service side first (load drift check; "
                    "with --repeat, the first run's order, alternating after it)")
    args = ap.parse_args(argv)
    runs = []
    for k in range(max(1, args.repeat)):
        res = run(args.images, args.size, args.keep, args.service_first != (k % 2 == 1))
        print(report(res) + "\n")
        runs.append(res)
    ratios = [r["ratio"] for r in runs]
    v = judge(ratios)
    print(v.line() + ("  (one pair: a single sample; --repeat N judges N pairs)" if len(ratios) == 1 else ""))
    out = runs[-1] | {"runs": runs, "ratios": ratios, "verdict": v.as_dict(), "verdict_line": v.line()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
