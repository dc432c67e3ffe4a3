"""Memory and bytes of moving media: the orchestrator's peak RSS while a big output moves from ComfyUI
into storage, and the media bytes that pass through the orchestrator per job on each byte path.

Usage: python benchmarks/ingest_memory.py [--mb 2048]

Needs the set-up (ComfyUI runtime, fixture model) and moto[server] (the dev extra) for the S3 side.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import service  # noqa: E402
from orchestrator.comfy.client import ComfyClient, FileRef  # noqa: E402
from orchestrator.comfy.worker import LocalWorker  # noqa: E402
from orchestrator.context import Context  # noqa: E402
from orchestrator.settings import PROJECT_ROOT, Settings  # noqa: E402
from storage import LocalDiskStore, MinioStore  # noqa: E402
from tests.s3 import S3Server  # noqa: E402

MiB = 1024 * 1024


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


def big_output(worker: LocalWorker, mb: int) -> FileRef:
    folder = worker.base_dir / "output" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    block = bytes(range(256)) * 4096  # 1 MiB
    with (folder / "big.bin").open("wb") as f:
        for i in range(mb):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    return FileRef("big.bin", "bench", "output")


def ingest(tmp: Path, worker: LocalWorker, s3: S3Server, mb: int) -> None:
    ref = big_output(worker, mb)
    client = ComfyClient(worker.url, timeout=600)
    stores = {"local disk": LocalDiskStore(tmp / "objects"),
              "S3 (moto)": MinioStore(s3.endpoint, s3.access_key, s3.secret_key, "bench", spool_dir=tmp)}
    for name, store in stores.items():
        with PeakRss() as rss:
            started = time.perf_counter()
            obj = store.put_stream(client.stream_view(ref))
            seconds = time.perf_counter() - started
        assert obj.size == mb * MiB
        print(f"{name:11s}: {mb} MiB from ComfyUI /view into the store in {seconds:5.1f} s; "
              f"peak RSS {(rss.peak - rss.base) / MiB:6.1f} MiB above the {rss.base / MiB:.0f} MiB before")


def bytes_per_job(tmp: Path, s3: S3Server) -> None:
    env = {"MEDIALAB_S3_ENDPOINT": s3.endpoint, "MEDIALAB_S3_ACCESS_KEY": s3.access_key,
           "MEDIALAB_S3_SECRET_KEY": s3.secret_key, "MEDIALAB_S3_BUCKET": "medialab"}
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    img = Image.effect_noise((256, 192), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with LocalWorker(runtime, models, tmp / "comfy-s3", device="cpu", env=env) as worker:
        for path in ("through", "direct"):
            ctx = Context(Settings(home=tmp / f"home-{path}", comfy_servers=[worker.url], storage="s3",
                                   s3_endpoint=s3.endpoint, s3_access_key=s3.access_key,
                                   s3_secret_key=s3.secret_key, byte_path=path))
            ctx.start_dispatcher()
            with ctx.db.session() as s:
                art = service.store_input(s, ctx.store, buf.getvalue(), f"{path}.png")
                job = service.submit_job(s, ctx.pool, "upscale-esrgan",
                                         {"image": art.id, "model": "tiny_x4.safetensors"})
            while True:
                with ctx.db.session() as s:
                    done = service.get_job(s, job.id)
                    outputs = service.job_outputs(s, job.id)
                if done.state.terminal:
                    break
                time.sleep(0.05)
            media = art.size + sum(o.size for o in outputs)
            print(f"byte path {path:7s}: job {done.state.value}, media {media / 1024:.0f} KiB, "
                  f"through the orchestrator {ctx.executor.bytes_through / 1024:.0f} KiB")
            ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=2048)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medialab-bench-"))
    runtime, models = PROJECT_ROOT / ".runtime" / "comfyui", PROJECT_ROOT / ".runtime" / "models"
    s3 = S3Server().start()
    try:
        with LocalWorker(runtime, models, tmp / "comfy", device="cpu") as worker:
            ingest(tmp, worker, s3, args.mb)
        bytes_per_job(tmp, s3)
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
