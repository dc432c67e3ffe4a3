"""Benchmark 5, large media: the orchestrator's peak RSS while a 2 GB video moves into storage, and the
media bytes that pass through the orchestrator per job on each byte path.

Usage: python benchmarks/ingest_memory.py [--mb 2048] [--small] [--json FILE]

Both ways a big video reaches the store are measured, on the local-disk store and on S3 (moto, in a
process of its own), each as the peak RSS of this process above its idle RSS just before (sampled every
20 ms; target: under 100 MiB above idle):
- out of ComfyUI: a ``--mb`` MiB ``.mp4`` output streamed from a real ComfyUI's /view into the store (what
  the executor does on the through byte path);
- in through the API: the same file uploaded by a client in another process (curl) to POST /v1/artifacts
  of the real FastAPI app (uvicorn in this process).
Then one upscale job per byte path (through, direct) on a server with the node pack and the store's
credentials, counting the media bytes that passed through the orchestrator (target: none on direct).
Needs the set-up (ComfyUI runtime, fixture model) and moto[server] (the dev extra).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import serve_api  # noqa: E402
from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context  # noqa: E402
from orchestrator.comfy.client import ComfyClient, FileRef  # noqa: E402
from orchestrator.comfy.worker import LocalWorker  # noqa: E402
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import jobs as job_db
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402
from storage import LocalDiskStore, MinioStore  # noqa: E402
from tests.s3 import S3Server  # noqa: E402

MiB = 1024 * 1024
TARGET_MIB = 100


class PeakRss:
    """Samples this process's RSS every 20 ms while in the with-block."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def stores(tmp: Path, s3: S3Server) -> dict[str, Settings]:
    return {"local disk": Settings(home=tmp / "home-local", local_trainer=False),
            "S3 (moto)": Settings(home=tmp / "home-s3", local_trainer=False, **s3.settings())}


def from_comfy(tmp: Path, worker: LocalWorker, s3: S3Server, mb: int) -> list[dict[str, Any]]:
    """A big output streamed from ComfyUI's /view into each store, as the executor does."""
    write_video(worker.base_dir / "output" / "bench", mb)
    ref = FileRef("big.mp4", "bench", "output")
    client = ComfyClient(worker.url, timeout=600)
    rows = []
    for name, store in {"local disk": LocalDiskStore(tmp / "objects"),
                        "S3 (moto)": MinioStore(s3.endpoint, s3.access_key, s3.secret_key, "bench",
                                                spool_dir=tmp)}.items():
        with PeakRss() as rss:
            started = time.perf_counter()
            obj = store.put_stream(client.stream_view(ref))
            seconds = time.perf_counter() - started
        assert obj.size == mb * MiB
        rows.append(row("ComfyUI /view -> store", name, mb, seconds, rss))
    client.close()
    return rows


def through_api(tmp: Path, s3: S3Server, mb: int) -> list[dict[str, Any]]:
    """The same video uploaded to POST /v1/artifacts by curl (another process) into each store."""
    video = write_video(tmp / "upload", mb)
    rows = []
    for name, settings in stores(tmp, s3).items():
        settings.comfy_servers = ["http://127.0.0.1:9"]  # a pool entry, so no local worker is started
        with serve_api(settings) as (base, key, _app), PeakRss() as rss:
            started = time.perf_counter()
            out = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"X-API-Key: {key}",
                                  "-F", f"file=@{video};type=video/mp4", f"{base}/v1/artifacts"],
                                 capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - started
        art = json.loads(out.stdout)
        assert art["size"] == mb * MiB and art["content_type"] == "video/mp4", art
        rows.append(row("client -> POST /v1/artifacts -> store", name, mb, seconds, rss))
    return rows


def row(way: str, store: str, mb: int, seconds: float, rss: PeakRss) -> dict[str, Any]:
    above = (rss.peak - rss.base) / MiB
    r = {"way": way, "store": store, "mib": mb, "seconds": round(seconds, 2), "idle_rss_mib": round(rss.base / MiB, 1),
         "peak_above_idle_mib": round(above, 1), "target_mib": TARGET_MIB, "met": above < TARGET_MIB}
    print(f"{way:38s} {store:10s}: {mb} MiB in {seconds:6.1f} s; peak RSS {above:6.1f} MiB above the "
          f"{rss.base / MiB:.0f} MiB idle -> {'met' if r['met'] else 'NOT met'} (< {TARGET_MIB} MiB)")
    return r


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
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args(argv)
    mb = 16 if args.small else args.mb
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    s3 = S3Server().start()
    try:
        with LocalWorker(runtime, models, tmp / "comfy", device="cpu") as worker:
            ingest = from_comfy(tmp, worker, s3, mb)
        ingest += through_api(tmp, s3, mb)
        paths = bytes_per_job(tmp, s3)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
           "ingest": ingest, "byte_paths": paths}
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
