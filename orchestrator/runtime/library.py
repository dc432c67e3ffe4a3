"""The template library on disk: ``<library>/<name>/v<N>/`` folders, each a ``manifest.json`` and a
``graph.json`` (API format). Reads the files; what a version is and how it is checked is in ``core.templates``
(``from_dicts``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.core.errors import InvalidInput
from orchestrator.core.templates import TemplateVersion, from_dicts

VERSION_DIR = re.compile(r"^v(\d+)$")


def load_version(folder: Path, name: str, version: int) -> TemplateVersion:
    """One version folder, read and checked; InvalidInput names the template, the folder and the problem."""
    where = f"template {name}@v{version} ({folder})"
    try:
        manifest_raw = json.loads((folder / "manifest.json").read_text())
        graph = json.loads((folder / "graph.json").read_text())
    except FileNotFoundError as exc:
        raise InvalidInput(f"{where}: missing {Path(exc.filename).name}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: bad JSON: {exc}") from exc
    return from_dicts(name, version, manifest_raw, graph, where)


def scan_library(root: Path) -> list[TemplateVersion]:
    """Every ``<name>/v<N>`` folder under root, sorted by name and version."""
    found = []
    for tdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for vdir in tdir.iterdir():
            m = VERSION_DIR.match(vdir.name)
            if m and vdir.is_dir():
                found.append(load_version(vdir, tdir.name, int(m.group(1))))
    return sorted(found, key=lambda t: (t.name, t.version))
