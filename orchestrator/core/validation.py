"""Check an API-format graph against a server's /object_info before anything runs (no I/O).

Node classes, required inputs, unknown inputs, links (the source exists and gives a compatible type),
and literal values (type, min/max, choices). Choices that list a server's files (models, uploaded images
and videos) are not checked here: those lists belong to one machine, and models are checked against the
server that runs the job (``capabilities.missing``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.graph import NodeProblem, is_link, title_of
from orchestrator.core.templates import MODEL_INPUTS

FILE_CHOICES = {("LoadImage", "image"), ("LoadVideo", "file"), ("LoadImageMask", "image")}


def types_match(given: Any, wanted: Any) -> bool:
    """Whether an output of type ``given`` may feed an input of type ``wanted`` (ComfyUI's rules)."""
    if given == "*" or wanted == "*":
        return True
    if isinstance(wanted, list) or wanted == "COMBO":
        return given == "COMBO" or isinstance(given, list)
    if not isinstance(given, str) or not isinstance(wanted, str):
        return False
    return bool({t.strip() for t in given.split(",")} & {t.strip() for t in wanted.split(",")})


def _literal_problem(cls: str, name: str, kind: Any, opts: dict[str, Any], value: Any) -> str | None:
    file_list = (cls, name) in FILE_CHOICES or name in {i for i, _ in MODEL_INPUTS.get(cls, [])} or \
        opts.get("image_upload") or opts.get("video_upload")
    choices = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
    if choices is not None:
        if not file_list and value not in choices:
            return f"{value!r} is not one of {choices}"
        return None
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an integer"
    elif kind == "FLOAT":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{value!r} is not a number"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not true/false"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    else:
        return f"needs a link from a node giving {kind}, not a value"
    if "min" in opts and value < opts["min"]:
        return f"{value} is below the minimum {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{value} is above the maximum {opts['max']}"
    return None


def validate_graph(graph: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Every problem found, one readable line each (node title, id, class and input named; a ``NodeProblem``
    carrying the node's id and input); [] if none."""
    problems: list[str] = []
    for nid, node in graph.items():
        cls = node.get("class_type", "?")
        where = NodeProblem(f"node '{title_of(node) or nid}' (#{nid} {cls})", nid)

        def at(name: str, text: str, where: NodeProblem = where, nid: str = nid) -> NodeProblem:
            return NodeProblem(f"{where} input '{name}': {text}", nid, name)

        info = object_info.get(cls)
        if info is None:
            problems.append(where.extend("unknown node class (is its node pack installed?)"))
            continue
        inputs = node.get("inputs") or {}
        required = (info.get("input") or {}).get("required") or {}
        spec = {**required, **((info.get("input") or {}).get("optional") or {})}
        problems += [NodeProblem(f"{where}: required input '{name}' is missing", nid, name)
                     for name in required if name not in inputs]
        for name, value in inputs.items():
            if name not in spec:
                problems.append(NodeProblem(f"{where}: unknown input '{name}'", nid, name))
                continue
            kind = spec[name][0]
            opts = spec[name][1] if len(spec[name]) > 1 and isinstance(spec[name][1], dict) else {}
            if is_link(value):
                src = graph.get(value[0])
                src_info = object_info.get(src["class_type"]) if src else None
                if src is None:
                    problems.append(at(name, f"links to node #{value[0]}, which is not in the graph"))
                elif src_info is not None:
                    outputs = src_info.get("output") or []
                    if value[1] >= len(outputs):
                        problems.append(at(name, f"node #{value[0]} has no output {value[1]}"))
                    elif not types_match(outputs[value[1]], kind):
                        problems.append(at(name, f"expects {kind if isinstance(kind, str) else 'COMBO'}, node "
                                                 f"#{value[0]} gives {outputs[value[1]]}"))
            elif (problem := _literal_problem(cls, name, kind, opts, value)) is not None:
                problems.append(at(name, problem))
    return problems
