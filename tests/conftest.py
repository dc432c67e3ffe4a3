"""Shared fixtures. Integration tests run against real ComfyUI servers started on the CPU."""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.comfy.worker import LocalWorker
from orchestrator.db.engine import Database
from orchestrator.settings import PROJECT_ROOT, Settings
from tests.pg import scratch_postgres

RUNTIME = PROJECT_ROOT / ".runtime" / "comfyui"
MODELS = PROJECT_ROOT / ".runtime" / "models"
FIXTURE_MODEL = "tiny_x4.safetensors"


def models_in(folder: str) -> str:
    """The files of a models folder as a server lists them in a refusal ("it has: a, b")."""
    path = MODELS / folder
    return ", ".join(sorted(p.name for p in path.iterdir())) if path.is_dir() else ""


def mp4_bytes(frames: int = 12, w: int = 64, h: int = 48, fps: int = 24) -> bytes:
    """A small real H.264 clip (PyAV, which ComfyUI's video nodes use too)."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 20 % 256, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def png_bytes(w: int = 128, h: int = 96, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (w, h), color)
    for x in range(0, w, 8):  # some structure, so outputs differ from a flat colour
        img.putpixel((x, x % h), (0, 0, 255))
    img.save(buf, format="PNG")
    return buf.getvalue()


def face_image(size: int = 256, background: tuple[int, int, int] = (60, 90, 60)) -> Image.Image:
    """A drawn face (skin oval, eyes, brows, nose, mouth, hair) that OpenCV's frontal-face cascade finds, centred
    on a ``2 * size`` square: no person's likeness, enough for the face finders."""
    from PIL import ImageDraw, ImageFilter

    img = Image.new("RGB", (size * 2, size * 2), background)
    d, c, s = ImageDraw.Draw(img), size, size / 256
    d.ellipse([c - 80 * s, c - 105 * s, c + 80 * s, c + 105 * s], fill=(225, 190, 160))
    for ex in (-35, 35):
        d.ellipse([c + (ex - 18) * s, c - 39 * s, c + (ex + 18) * s, c - 21 * s], fill=(40, 30, 30))
        d.rectangle([c + (ex - 24) * s, c - 52 * s, c + (ex + 24) * s, c - 46 * s], fill=(70, 50, 40))
    d.polygon([(c, c - 20 * s), (c - 10 * s, c + 25 * s), (c + 10 * s, c + 25 * s)], fill=(205, 165, 135))
    d.ellipse([c - 30 * s, c + 45 * s, c + 30 * s, c + 60 * s], fill=(150, 60, 60))
    d.rectangle([c - 95 * s, c - 140 * s, c + 95 * s, c - 95 * s], fill=(50, 35, 25))
    return img.filter(ImageFilter.GaussianBlur(3))


def start_workers(tmp_path_factory: pytest.TempPathFactory, count: int, models: Path = MODELS,
                  **worker_kw: object) -> list[LocalWorker]:
    """Real ComfyUI 0.3.75 servers on the CPU (with the project's node pack), started in parallel (~10 s)."""
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    workers = [LocalWorker(RUNTIME, models, tmp_path_factory.mktemp("comfy"), device="cpu", **worker_kw)
               for _ in range(count)]
    errors: list[Exception] = []

    def start(w: LocalWorker) -> None:
        try:
            w.start()
        except Exception as exc:  # reported below, after every start has ended
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for w in workers:
            w.stop()
        raise errors[0]
    return workers


@pytest.fixture(scope="session")
def comfy_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two servers with the fixture ESRGAN model, for the whole session."""
    workers = start_workers(tmp_path_factory, 2)
    yield [w.url for w in workers]
    for w in workers:
        w.stop()


@pytest.fixture(scope="session")
def comfy_url(comfy_pair: list[str]) -> str:
    return comfy_pair[0]


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """The packaged library plus a test template whose manifest is looser than ComfyUI's own limits."""
    root = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "comfy_workflows", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    v1 = root / "scale-by" / "v1"
    v1.mkdir(parents=True)
    (v1 / "graph.json").write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Input"}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                        "scale_by": 2.0}, "_meta": {"title": "Scale"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t/scale"},
              "_meta": {"title": "Result"}},
    }))
    (v1 / "manifest.json").write_text(json.dumps({
        "title": "Scale by", "kind": "image",
        "parameters": [
            {"name": "image", "type": "image", "bind": {"node": "Input", "input": "image"}},
            {"name": "scale", "type": "float", "default": 2.0, "min": 0.01,
             "bind": {"node": "Scale", "input": "scale_by"}},
        ],
        "outputs": [{"node": "Result", "name": "scaled"}],
    }))
    return root


@pytest.fixture
def settings(tmp_path: Path, templates_dir: Path) -> Settings:
    return Settings(home=tmp_path / "home", templates_dir=templates_dir, event_timeout_s=5.0)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database (dropped afterwards); skipped without a PostgreSQL at 127.0.0.1:5432."""
    with scratch_postgres() as url:
        if url is None:
            pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432; .ci/run starts it")
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of each kind: SQLite in tmp_path, and a scratch PostgreSQL one (skipped without it)."""
    url = (f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    database = Database(url)
    yield database
    database.engine.dispose()
