"""How a job's bytes travel (plain functions, no I/O).

Two byte paths per server:
- through: the orchestrator uploads inputs with /upload/image and streams outputs from /view (core
  LoadImage/LoadVideo/SaveImage/SaveVideo nodes; ComfyUI's upload limit applies, 100 MB by default);
- direct: ComfyUI reads inputs from and writes outputs to object storage itself, through the project's
  node pack; no media byte passes through the orchestrator and there is no upload limit.

Templates stay core-only: for the direct path the graph is rewritten node for node (same ids, titles and
links), loaders bound to input parameters and the core save nodes swapped for the pack's.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any

from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import InvalidInput
from orchestrator.core.graph import nodes_by_title

LOADERS = {"LoadImage": ("image", "MediaLabLoadImage"), "LoadVideo": ("file", "MediaLabLoadVideo"),
           "MediaLabParamImage": ("image", "MediaLabLoadImage"), "MediaLabParamVideo": ("file", "MediaLabLoadVideo")}
SAVERS = {"SaveImage": "MediaLabSaveImage", "SaveVideo": "MediaLabSaveVideo"}


class BytePath(StrEnum):
    through = "through"
    direct = "direct"


def why_not_direct(caps: Capabilities | None, bucket: str | None, t: tpl.TemplateVersion) -> str | None:
    """None when the direct path can carry this template on this server; else the reason."""
    if bucket is None:
        return "the orchestrator stores on local disk"
    pack = (caps.pack if caps else None) or {}
    if not pack:
        return "the server lacks the medialab node pack"
    storage = pack.get("storage")
    if not storage:
        return "the server has no object storage configured (MEDIALAB_S3_ENDPOINT)"
    if storage.get("bucket") != bucket:
        return f"the server stores in bucket {storage.get('bucket')!r}, not {bucket!r}"
    titles = nodes_by_title(t.graph)
    for p in t.manifest.parameters:
        if p.type in tpl.ARTIFACT_TYPES:
            node = t.graph[titles[p.bind.node]]
            if node["class_type"] not in LOADERS or LOADERS[node["class_type"]][0] != p.bind.input:
                return f"input {p.name} goes into a {node['class_type']} node, which has no direct loader"
    return None


def choose(policy: str, caps: Capabilities | None, bucket: str | None, t: tpl.TemplateVersion,
           largest_input: int) -> tuple[BytePath, str]:
    """The byte path for a job, and why. Inputs over the server's upload limit always go direct."""
    reason = why_not_direct(caps, bucket, t)
    limit = caps.max_upload_bytes if caps else 100 * 1024 * 1024
    too_big = largest_input > limit
    if policy == "direct" or too_big:
        if reason:
            what = f"an input of {largest_input} bytes is over the server's upload limit of {limit}" if too_big \
                else "MEDIALAB_BYTE_PATH=direct"
            raise InvalidInput(f"{what}, but the direct byte path is not possible: {reason}")
        return BytePath.direct, "input over the upload limit" if too_big else "configured"
    if policy == "through":
        return BytePath.through, "configured"
    return (BytePath.through, reason) if reason else (BytePath.direct, "server has the pack and the bucket")


def direct_graph(t: tpl.TemplateVersion, values: dict[str, Any]) -> dict[str, Any]:
    """The bound graph for the direct path: ``values`` hold object keys for the input parameters."""
    graph = tpl.bind(t, values)
    titles = nodes_by_title(graph)
    for p in t.manifest.parameters:
        if p.type in tpl.ARTIFACT_TYPES and values.get(p.name):
            node = graph[titles[p.bind.node]]
            node["class_type"] = LOADERS[node["class_type"]][1]
            node["inputs"] = {"source": values[p.name]}
    for node in graph.values():
        if node["class_type"] in SAVERS:
            node["class_type"] = SAVERS[node["class_type"]]
    return copy.deepcopy(graph)
