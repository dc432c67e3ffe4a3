"""The pipeline library on disk: ``<library>/<name>/v<N>/pipeline.json`` (the packaged one is
``comfy_pipelines/``). Reads the files; what a definition is and how it is checked is in ``core.pipelines``.
Checking a definition against its templates needs the recorded template versions, so that is the use case's
part (``app.pipelines.sync_pipelines``)."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput
from orchestrator.runtime.library import VERSION_DIR


def load_pipeline(folder: Path, name: str, version: int) -> pl.Pipeline:
    """One version folder, read and parsed; the name and version in the file, when given, must be the
    folder's. InvalidInput names the pipeline, the folder and the problem."""
    where = f"pipeline {name}@v{version} ({folder})"
    try:
        raw = json.loads((folder / "pipeline.json").read_text())
    except FileNotFoundError as exc:
        raise InvalidInput(f"{where}: missing pipeline.json") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: bad JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: a pipeline definition is a JSON object")
    for key, expected in (("name", name), ("version", version)):
        if raw.setdefault(key, expected) != expected:
            raise InvalidInput(f"{where}: the file says {key} {raw[key]!r}, the folder {expected!r}")
    return pl.parse(raw, where)


def scan_pipelines(root: Path) -> list[pl.Pipeline]:
    """Every ``<name>/v<N>`` folder under root (none when root does not exist), sorted by name and version."""
    if not root.is_dir():
        return []
    found = []
    for pdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for vdir in pdir.iterdir():
            m = VERSION_DIR.match(vdir.name)
            if m and vdir.is_dir():
                found.append(load_pipeline(vdir, pdir.name, int(m.group(1))))
    return sorted(found, key=lambda p: (p.name, p.version))
