"""Per-job overhead of the orchestrator against a careful direct ComfyUI client, side by side.

Usage: python benchmarks/overhead.py [--jobs N]

One real ComfyUI on the CPU with the fixture ESRGAN model; every job upscales a different 128x96 frame
(so ComfyUI's cache never short-cuts one). The direct client uploads, submits, waits on the websocket,
reads /history and downloads the output. The orchestrator path does the same through the service:
store input, validate + submit (job written first), dispatch, follow, stream the output into the store
with lineage. Prints p50/p90 per-job latency of both and their difference.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import service  # noqa: E402
from orchestrator import templates as tpl  # noqa: E402
from orchestrator.comfy.client import ComfyClient, output_files  # noqa: E402
from orchestrator.comfy.worker import LocalWorker  # noqa: E402
from orchestrator.context import Context  # noqa: E402
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402

MODEL = "tiny_x4.safetensors"


def frame(i: int) -> bytes:
    img = Image.new("RGB", (128, 96), (i % 256, (i * 7) % 256, (i * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def direct_job(client: ComfyClient, t: tpl.TemplateVersion, data: bytes) -> float:
    start = time.perf_counter()
    pid = str(uuid.uuid4())
    name = client.upload(data, f"{pid}.png", subfolder="bench")
    graph = tpl.bind(t, {"image": name, "model": MODEL})
    with client.events(pid) as ev:
        client.submit(graph, pid, pid)
        while True:
            e = ev.recv(60)
            if e and e["type"] == "executing" and e["data"].get("prompt_id") == pid and e["data"]["node"] is None:
                break
    entry = client.history(pid)
    for ui in entry["outputs"].values():
        for ref in output_files(ui):
            b"".join(client.stream_view(ref))
    return time.perf_counter() - start


def orchestrated_job(ctx: Context, data: bytes, i: int) -> float:
    start = time.perf_counter()
    with ctx.db.session() as s:
        art = service.store_input(s, ctx.store, data, f"f{i}.png")
        job = service.submit_job(s, ctx.pool, "upscale-esrgan", {"image": art.id, "model": MODEL})
    ctx.dispatcher.wake()
    while True:
        with ctx.db.session() as s:
            if service.get_job(s, job.id).state.terminal:
                break
        time.sleep(0.002)
    return time.perf_counter() - start


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100)[int(p) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    with LocalWorker(runtime, models, tmp / "comfy", device="cpu") as worker:
        ctx = Context(Settings(home=tmp / "home", comfy_servers=[worker.url]))
        ctx.start_dispatcher()
        client = ComfyClient(worker.url)
        esrgan = tpl.pick(tpl.scan_library(PROJECT_ROOT / "comfy_workflows"), "upscale-esrgan")
        direct_job(client, esrgan, frame(10_000))  # warm-up: model load, first-prompt costs
        orchestrated_job(ctx, frame(10_001), 10_001)
        direct, orch = [], []
        for i in range(args.jobs):  # interleaved, so drift on a busy machine hits both alike
            direct.append(direct_job(client, esrgan, frame(2 * i)))
            orch.append(orchestrated_job(ctx, frame(2 * i + 1), 2 * i + 1))
        ctx.close()
    print(f"jobs per path: {args.jobs} (interleaved), ESRGAN x4 fixture on a 128x96 frame, ComfyUI on the CPU")
    print(f"direct client : p50 {pct(direct, 50) * 1000:7.1f} ms   p90 {pct(direct, 90) * 1000:7.1f} ms")
    print(f"orchestrator  : p50 {pct(orch, 50) * 1000:7.1f} ms   p90 {pct(orch, 90) * 1000:7.1f} ms")
    print(f"overhead p50  : {(pct(orch, 50) - pct(direct, 50)) * 1000:+.1f} ms "
          f"(ratio {pct(orch, 50) / pct(direct, 50):.2f})")


if __name__ == "__main__":
    main()
