"""What a ComfyUI server can run, and what a job needs (plain data, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core import sandbox

ModelRef = tuple[str, str]  # (models folder, file name)


@dataclass(frozen=True)
class Capabilities:
    node_classes: frozenset[str] = frozenset()
    models: dict[str, frozenset[str]] = field(default_factory=dict)
    packs: tuple[str, ...] = ()
    comfy_version: str | None = None
    device: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    pack: dict[str, Any] | None = None  # the node pack's /medialab/info: version, storage, max_upload_mb
    # Per node class, the inputs that name a file (sandbox.file_inputs) and the free-text ones (multiline
    # STRING widgets, sandbox.free_text); None: recorded before it was known (the sandbox checks everything).
    file_inputs: dict[str, frozenset[str]] | None = None
    free_text: dict[str, frozenset[str]] | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int((self.pack or {}).get("max_upload_mb") or 100) * 1024 * 1024

    @classmethod
    def from_probe(cls, object_info: dict[str, Any], models: dict[str, list[str]],
                   system_stats: dict[str, Any], pack: dict[str, Any] | None = None) -> Capabilities:
        """Build from a server's /object_info, /models/{folder} lists, /system_stats and /medialab/info."""
        packs = sorted({str(info.get("python_module", "")).removeprefix("custom_nodes.")
                        for info in object_info.values()
                        if str(info.get("python_module", "")).startswith("custom_nodes.")})
        devices = system_stats.get("devices") or [{}]
        return cls(node_classes=frozenset(object_info), models={f: frozenset(v) for f, v in models.items()},
                   packs=tuple(packs), comfy_version=(system_stats.get("system") or {}).get("comfyui_version"),
                   device=devices[0].get("name"), vram_total=devices[0].get("vram_total"),
                   vram_free=devices[0].get("vram_free"), pack=pack, file_inputs=sandbox.file_inputs(object_info),
                   free_text=sandbox.free_text(object_info))

    def to_json(self) -> dict[str, Any]:
        return {"node_classes": sorted(self.node_classes), "models": {f: sorted(v) for f, v in self.models.items()},
                "packs": list(self.packs), "comfy_version": self.comfy_version, "device": self.device,
                "vram_total": self.vram_total, "vram_free": self.vram_free, "pack": self.pack,
                "file_inputs": _inputs_json(self.file_inputs), "free_text": _inputs_json(self.free_text)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Capabilities | None:
        if not data:
            return None
        return cls(node_classes=frozenset(data.get("node_classes", [])),
                   models={f: frozenset(v) for f, v in (data.get("models") or {}).items()},
                   packs=tuple(data.get("packs", [])), comfy_version=data.get("comfy_version"),
                   device=data.get("device"), vram_total=data.get("vram_total"), vram_free=data.get("vram_free"),
                   pack=data.get("pack"), file_inputs=_inputs_from_json(data.get("file_inputs")),
                   free_text=_inputs_from_json(data.get("free_text")))


def _inputs_json(inputs: dict[str, frozenset[str]] | None) -> dict[str, list[str]] | None:
    return None if inputs is None else {c: sorted(v) for c, v in sorted(inputs.items())}


def _inputs_from_json(data: dict[str, list[str]] | None) -> dict[str, frozenset[str]] | None:
    return None if data is None else {c: frozenset(v) for c, v in data.items()}


@dataclass(frozen=True)
class Requirements:
    node_classes: frozenset[str]
    models: frozenset[ModelRef]
    # Files a node finds by name pattern rather than by exact name (IP-Adapter presets): (folder, regex, what)
    patterns: frozenset[tuple[str, str, str]] = frozenset()

    @classmethod
    def of_graph(cls, graph: dict[str, Any], models: set[ModelRef],
                 patterns: set[tuple[str, str, str]] | None = None) -> Requirements:
        return cls(frozenset(n["class_type"] for n in graph.values()), frozenset(models), frozenset(patterns or ()))


def missing(caps: Capabilities | None, req: Requirements) -> list[str]:
    """What the server lacks for the job, as readable items; [] when it can run it."""
    if caps is None:
        return ["(capabilities not known yet)"]
    lacks = [f"node {c}" for c in sorted(req.node_classes - caps.node_classes)]
    for folder, name in sorted(req.models):
        has = caps.models.get(folder, frozenset())
        if name not in has:
            lacks.append(f"{folder}/{name} (it has: {', '.join(sorted(has)[:10]) or 'none'})")
    for folder, pattern, what in sorted(req.patterns):
        has = caps.models.get(folder, frozenset())
        if not any(re.search(pattern, name, re.IGNORECASE) for name in has):
            lacks.append(f"{what} in {folder} (a file matching {pattern}; "
                         f"it has: {', '.join(sorted(has)[:10]) or 'none'})")
    return lacks
