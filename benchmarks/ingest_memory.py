"""Benchmark 5, large media: the orchestrator's peak RSS while a 2 GB video moves into storage, and the
media bytes that pass through the orchestrator per job on each byte path.

Usage: python benchmarks/ingest_memory.py [--mb 2048] [--small] [--repeat N] [--json FILE]

Both ways a big video reaches the store are measured, on the local-disk store and on S3 (moto, in a
process of its own), each as the peak RSS of this process above its idle RSS just before (sampled every
20 ms; issue 17's target: under 64 MiB above idle; with ``--repeat``, idle is the RSS before the row's first
transfer, so whatever a transfer keeps counts against the next):
- out of ComfyUI: a ``--mb`` MiB ``.mp4`` output streamed from a real ComfyUI's /view into the store (what
  the executor does on the through byte path);
- in through the API: the same file uploaded by a client in another process (curl) to POST /v1/artifacts
  of the real FastAPI app (uvicorn in this process).
Then one upscale job per byte path (through, direct) on a server with the node pack and the store's
credentials, counting the media bytes that passed through the orchestrator (target: none on direct).
Needs the set-up (ComfyUI runtime, fixture model) and moto[server] (the dev extra).

Verdicts (benchmarks/verdict.py): each way into each store is judged from its samples, the peak above idle
of ``--repeat N`` transfers (default 1), against at most 64 MiB: the median with a bootstrap interval, MET /
NOT MET / TOO NOISY TO JUDGE; overall, all four rows. Every transfer moves distinct bytes (the file's last 8
bytes, inside the padding, differ from run to run, so no store answers from an object it has), and each
object is deleted once measured. One run is a single sample: its line says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import uvicorn
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import verdict  # noqa: E402
from orchestrator.api.app import create_app  # noqa: E402
from orchestrator.app import artifacts as artifact_app  # noqa: E402
from orchestrator.app import jobs as job_app  # noqa: E402
from orchestrator.app import keys as key_app  # noqa: E402
from orchestrator.bootstrap import Context  # noqa: E402
from orchestrator.comfy.client import ComfyClient, FileRef  # noqa: E402
from orchestrator.comfy.worker import LocalWorker, free_port  # noqa: E402
from orchestrator.db import artifacts as artifact_db  # noqa: E402
from orchestrator.db import jobs as job_db  # noqa: E402
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402
from storage import LocalDiskStore, MinioStore  # noqa: E402
from tests.s3 import S3Server  # noqa: E402

MiB = 1024 * 1024
TARGET_MIB = 64  # issue 17: a 2 GB video into either store with under 64 MB of memory growth


class PeakRss:
    """Samples this process's RSS every 20 ms while in the with-block; ``base``: the idle RSS to measure from
    (default: the RSS on entering)."""

    def __init__(self, base: int | None = None) -> None:
        self.proc = psutil.Process()
        self.fixed = base
        self.peak = self.base = self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.peak = self.proc.memory_info().rss
        self.base = self.fixed if self.fixed is not None else self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def write_video(folder: Path, mb: int) -> Path:
    """A real (short) H.264 clip padded to ``mb`` MiB with distinct 1 MiB blocks inside an MP4 ``free`` box:
    an upload is probed as a video (it must be one), and the padding is what the byte paths move."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.mp4"
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("h264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    padding = mb * MiB - path.stat().st_size - 8
    assert 0 < padding < 1 << 32, "a free box holds under 4 GiB"
    block = bytes(range(256)) * 4096  # 1 MiB
    with path.open("ab") as f:
        f.write((padding + 8).to_bytes(4, "big") + b"free")
        for i in range(0, padding, MiB):
            f.write((block[:-8] + (i // MiB).to_bytes(8, "big"))[:padding - i])
    return path


@contextmanager
def serve_api(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """The FastAPI app (with its dispatcher) under uvicorn in a thread; yields (base URL, run key, app)."""
    app = create_app(settings, dispatch=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
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


def resalt(path: Path, run: int) -> None:
    """Make run ``run``'s bytes distinct (a new sha256, so no store already has them): its number in the file's
    last 8 bytes, which lie in the ``free`` box's padding. Run 0 keeps the file as written."""
    if run:
        with path.open("r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"run" + run.to_bytes(5, "big"))


def stores(tmp: Path, s3: S3Server) -> dict[str, Settings]:
    return {"local disk": Settings(home=tmp / "home-local", local_trainer=False),
            "S3 (moto)": Settings(home=tmp / "home-s3", local_trainer=False, **s3.settings())}


def from_comfy(tmp: Path, worker: LocalWorker, s3: S3Server, mb: int, repeat: int = 1) -> list[dict[str, Any]]:
    """A big output streamed from ComfyUI's /view into each store, as the executor does, ``repeat`` times."""
    video = write_video(worker.base_dir / "output" / "bench", mb)
    ref = FileRef("big.mp4", "bench", "output")
    client = ComfyClient(worker.url, timeout=600)
    rows = []
    for name, store in {"local disk": LocalDiskStore(tmp / "objects"),
                        "S3 (moto)": MinioStore(s3.endpoint, s3.access_key, s3.secret_key, "bench",
                                                spool_dir=tmp)}.items():
        samples, idle = [], psutil.Process().memory_info().rss
        for k in range(repeat):
            resalt(video, k)
            with PeakRss(idle) as rss:
                started = time.perf_counter()
                obj = store.put_stream(client.stream_view(ref))
                seconds = time.perf_counter() - started
            assert obj.size == mb * MiB
            store.delete(obj.key)  # neither the disk nor moto's memory holds N copies
            samples.append(sample(seconds, rss))
        rows.append(row("ComfyUI /view -> store", name, mb, samples))
    client.close()
    return rows


def through_api(tmp: Path, s3: S3Server, mb: int, repeat: int = 1) -> list[dict[str, Any]]:
    """The same video uploaded to POST /v1/artifacts by curl (another process) into each store, ``repeat``
    times."""
    video = write_video(tmp / "upload", mb)
    rows = []
    for name, settings in stores(tmp, s3).items():
        settings.comfy_servers = ["http://127.0.0.1:9"]  # a pool entry, so no local worker is started
        samples = []
        with serve_api(settings) as (base, key, app):
            idle = psutil.Process().memory_info().rss
            for k in range(repeat):
                resalt(video, k)
                with PeakRss(idle) as rss:
                    started = time.perf_counter()
                    out = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"X-API-Key: {key}",
                                          "-F", f"file=@{video};type=video/mp4", f"{base}/v1/artifacts"],
                                         capture_output=True, text=True, check=True)
                    seconds = time.perf_counter() - started
                art = json.loads(out.stdout)
                assert art["size"] == mb * MiB and art["content_type"] == "video/mp4", art
                with app.state.ctx.db.session() as s:
                    app.state.ctx.store.delete(artifact_db.get_artifact(s, art["id"]).key)
                samples.append(sample(seconds, rss))
        rows.append(row("client -> POST /v1/artifacts -> store", name, mb, samples))
    return rows


def sample(seconds: float, rss: PeakRss) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "idle_rss_mib": round(rss.base / MiB, 1),
            "peak_above_idle_mib": round((rss.peak - rss.base) / MiB, 1)}


def judge(way: str, store: str, above_mib: list[float]) -> verdict.Verdict:
    """The peak RSS above idle of one way into one store, one sample per transfer, against at most 64 MiB."""
    return verdict.judge(f"{way} [{store}] peak RSS above idle", above_mib, TARGET_MIB, unit="MiB")


def row(way: str, store: str, mb: int, samples: list[dict[str, float]]) -> dict[str, Any]:
    """One way into one store: the medians of its samples, the samples, and the verdict on them (printed)."""
    v = judge(way, store, [x["peak_above_idle_mib"] for x in samples])
    secs = statistics.median(x["seconds"] for x in samples)
    idle = statistics.median(x["idle_rss_mib"] for x in samples)
    r = {"way": way, "store": store, "mib": mb, "seconds": secs, "idle_rss_mib": idle,
         "peak_above_idle_mib": v.median, "target_mib": TARGET_MIB, "samples": samples, "verdict": v.as_dict(),
         "verdict_line": v.line(), "outcome": v.outcome}
    of = f" (median of {len(samples)})" if len(samples) > 1 else ""
    print(f"{way:38s} {store:10s}: {mb} MiB in {secs:6.1f} s{of}; peak RSS above the "
          f"{idle:.0f} MiB idle: " + ", ".join(f"{x['peak_above_idle_mib']:.1f}" for x in samples) + " MiB")
    print("  " + v.line() + (ONE_SAMPLE if len(samples) == 1 else ""))
    return r


ONE_SAMPLE = "  (one run: a single sample; --repeat N judges N runs)"


def bytes_per_job(tmp: Path, s3: S3Server) -> list[dict[str, Any]]:
    env = {"MEDIALAB_S3_ENDPOINT": s3.endpoint, "MEDIALAB_S3_ACCESS_KEY": s3.access_key,
           "MEDIALAB_S3_SECRET_KEY": s3.secret_key, "MEDIALAB_S3_BUCKET": "medialab"}
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    img = Image.effect_noise((256, 192), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rows = []
    with LocalWorker(runtime, models, tmp / "comfy-s3", device="cpu", env=env) as worker:
        for path in ("through", "direct"):
            ctx = Context(Settings(home=tmp / f"home-{path}", comfy_servers=[worker.url], storage="s3",
                                   s3_endpoint=s3.endpoint, s3_access_key=s3.access_key,
                                   s3_secret_key=s3.secret_key, byte_path=path, local_trainer=False))
            ctx.start_dispatcher()
            with ctx.db.session() as s:
                art = artifact_app.store_input(s, ctx.store, buf.getvalue(), f"{path}.png")
                job = job_app.submit_job(s, ctx.pool, "upscale-esrgan",
                                         {"image": art.id, "model": "tiny_x4.safetensors"})
            while True:
                with ctx.db.session() as s:
                    done = job_db.get_job(s, job.id)
                    outputs = artifact_db.job_outputs(s, job.id)
                if done.state.terminal:
                    break
                time.sleep(0.05)
            media = art.size + sum(o.size for o in outputs)
            through = ctx.executor.bytes_through
            rows.append({"byte_path": path, "state": done.state.value, "media_bytes": media,
                         "through_orchestrator_bytes": through})
            print(f"byte path {path:7s}: job {done.state.value}, media {media / 1024:.0f} KiB, "
                  f"through the orchestrator {through / 1024:.0f} KiB"
                  + (" (target: none) -> " + ("met" if through == 0 else "NOT met") if path == "direct" else ""))
            ctx.close()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=2048, help="size of the video in MiB (default 2048)")
    ap.add_argument("--small", action="store_true", help="16 MiB (CI)")
    ap.add_argument("--repeat", type=int, default=1, help="transfers per way and store, judged together (default 1)")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args(argv)
    repeat = max(1, args.repeat)
    mb = 16 if args.small else args.mb
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    s3 = S3Server().start()
    try:
        with LocalWorker(runtime, models, tmp / "comfy", device="cpu") as worker:
            ingest = from_comfy(tmp, worker, s3, mb, repeat)
        ingest += through_api(tmp, s3, mb, repeat)
        paths = bytes_per_job(tmp, s3)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
           "repeat": repeat, "ingest": ingest, "byte_paths": paths,
           "overall": verdict.overall([verdict.Verdict(**r["verdict"]) for r in ingest])}
    print(f"overall (every way into every store under {TARGET_MIB} MiB above idle, {mb} MiB video): {res['overall']}"
          + ("" if mb >= 2048 else f" (at {mb} MiB, not the target's 2 GB)"))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
