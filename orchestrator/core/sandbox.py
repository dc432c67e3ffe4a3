"""What a graph may reach on a ComfyUI server: the input-path rule and the URL rule (pure, no I/O).

Every file input of every node (images, videos, masks, audio, model names: ComfyUI's COMBO and upload
inputs, and the STRING inputs that take a path) must name a file inside ComfyUI's own folders or our
store. Absolute paths (``/x``, ``\\x``, ``C:\\x``, ``~``), ``..`` segments (also percent-encoded or in
full-width forms), NUL and other control characters are refused, with a message that never depends on
whether the file exists. The project's loaders (MediaLabLoadImage/Video ``source``) take an object key
(``sha256/<2 hex>/<64 hex>`` exactly) or a URL that the URL rule (``custom_nodes/urls.py``, shared with
the node pack) allows.

Which inputs are file inputs comes from node definitions (an ``/object_info``, or what a server's
capabilities recorded: ``file_inputs`` and ``free_text``). File inputs get the strict rule. Every other
string value is checked for escapes too (absolute paths, ``..``, NUL: a STRING input named ``image`` or
``video`` of a third-party loader may well be a path), except the free-text inputs of known classes: the
multiline STRING widgets (prompts), which stay free. A node class with no known definition has every string
value checked, bar the prompts of a few core nodes (``FREE_TEXT_FALLBACK``). A file input fed by a link is
followed through the nodes that pass a value on (parameter and primitive nodes) to the literal that is
checked; a file name computed by another node cannot be checked and is refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from custom_nodes import urls
from orchestrator.core.graph import NodeProblem, is_link, title_of

MAX_FILE_NAME = 1024  # characters in a file input's value
MAX_SEGMENT = 255  # bytes in one path segment (NAME_MAX)

# Inputs that take a URL or an object key instead of a file name.
SOURCE_INPUTS = {("MediaLabLoadImage", "source"), ("MediaLabLoadVideo", "source")}
# STRING inputs known to name a file or folder (beyond what PATH_NAME catches), and the parameter nodes'
# values, which feed COMBO (file) inputs through their any-type output.
PATH_STRINGS = {("SaveLoRA", "prefix"), ("MediaLabParamModel", "value"), ("MediaLabParamChoice", "value"),
                *SOURCE_INPUTS}
PATH_NAME = re.compile(r"(^|_)(path|paths|file|files|filename|filenames|dir|directory|folder|source|url|uri|ckpt)"
                       r"(_|$)")
# Nodes whose output is the value of one of their inputs: a link from them is followed to that value.
PASS_THROUGH = {cls: "value" for cls in (
    "MediaLabParamText", "MediaLabParamInt", "MediaLabParamFloat", "MediaLabParamBool", "MediaLabParamChoice",
    "MediaLabParamModel", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveInt", "PrimitiveFloat",
    "PrimitiveBoolean")}
# Prompts of core nodes, free even when no definitions are known (old capability rows, no server yet).
# With definitions, the free inputs are the multiline STRING widgets (``free_text``).
FREE_TEXT_FALLBACK = {("CLIPTextEncode", "text"), ("CLIPTextEncodeSDXL", "text_g"), ("CLIPTextEncodeSDXL", "text_l"),
                      ("CLIPTextEncodeSDXLRefiner", "text"), ("MediaLabParamText", "value")}

_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$", re.DOTALL)  # LoadImage's "name.png [output]"
_DRIVE = re.compile(r"^[A-Za-z]:")
_HOME = re.compile(r"^~([A-Za-z0-9._-]*[/\\]|$)")  # ~, ~/x, ~user/x


def is_file_input(cls: str, name: str, spec: Any) -> bool:
    """Whether an input of a node definition names a file: COMBO (model lists, uploads; enum choices pass
    the rule anyway), an upload widget, or a STRING that takes a path."""
    kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
    opts = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list) or kind == "COMBO" or any(k.endswith("_upload") and v for k, v in opts.items()):
        return True
    return kind == "STRING" and ((cls, name) in PATH_STRINGS or PATH_NAME.search(name) is not None)


def is_free_text(cls: str, name: str, spec: Any) -> bool:
    """Whether an input of a node definition is free text (a prompt): a multiline STRING widget that is not a
    file input. Its values may hold anything a prompt holds, '../' and leading slashes included."""
    kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
    opts = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind == "STRING" and opts.get("multiline") is True and not is_file_input(cls, name, spec)


def _inputs_where(object_info: Mapping[str, Any], test: Any) -> dict[str, frozenset[str]]:
    out = {}
    for cls, info in object_info.items():
        inputs = (info or {}).get("input") or {}
        names = frozenset(name for section in ("required", "optional")
                          for name, spec in (inputs.get(section) or {}).items() if test(cls, name, spec))
        if names:
            out[cls] = names
    return out


def file_inputs(object_info: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Per node class, the inputs that name a file (classes with none are left out)."""
    return _inputs_where(object_info, is_file_input)


def free_text(object_info: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Per node class, the free-text inputs (multiline STRING widgets; classes with none are left out)."""
    return _inputs_where(object_info, is_free_text)


class _Known(Protocol):
    node_classes: frozenset[str]
    file_inputs: Mapping[str, frozenset[str]] | None
    free_text: Mapping[str, frozenset[str]] | None


@dataclass(frozen=True)
class Definitions:
    """What is known of the node classes a graph may use: for each known class, its file inputs and its
    free-text inputs (every other string value of a known class is checked for escapes)."""

    known: frozenset[str] = frozenset()
    file_inputs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    free_text: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_object_info(cls, object_info: Mapping[str, Any]) -> Definitions:
        return cls(frozenset(object_info), file_inputs(object_info), free_text(object_info))

    @classmethod
    def merge(cls, servers: Iterable[_Known | None]) -> Definitions:
        """Several servers' capabilities, read the strictest way: a class is known where a server recorded its
        inputs; its file inputs are the union, its free-text inputs those that every server knowing the
        class calls free. Capabilities recorded before file inputs and free text were are ignored (their
        classes stay unknown: every value is checked)."""
        known: set[str] = set()
        merged: dict[str, frozenset[str]] = {}
        free: dict[str, frozenset[str]] = {}
        for caps in servers:
            if caps is None or caps.file_inputs is None or caps.free_text is None:
                continue
            for c in caps.node_classes:
                names = caps.free_text.get(c, frozenset())
                free[c] = free[c] & names if c in known else names
            known |= caps.node_classes
            for c, names in caps.file_inputs.items():
                merged[c] = merged.get(c, frozenset()) | names
        return cls(frozenset(known), merged, {c: names for c, names in free.items() if names})


# -- the input-path rule ---------------------------------------------------------------------------
def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _variants(value: str) -> list[str]:
    """The value as ComfyUI or a later layer might read it: as is, percent-decoded (up to 3 times), and in
    Unicode compatibility form (full-width dots and slashes)."""
    seen = [value]
    current = value
    for _ in range(3):
        decoded = unquote(current)
        if decoded == current:
            break
        seen.append(decoded)
        current = decoded
    seen += [unicodedata.normalize("NFKC", v) for v in list(seen)]
    return seen


def _escapes(value: str) -> bool:
    for v in _variants(value):
        if v.startswith(("/", "\\")) or _DRIVE.match(v) or _HOME.match(v) or "\x00" in v:
            return True
        if ".." in re.split(r"[/\\]", v):
            return True
    return False


def path_problem(value: str, strict: bool = True) -> str | None:
    """Why a file name leaves ComfyUI's folders (or is no plain file name), or None when it stays inside.

    ``strict`` (a known file input): control characters, URLs and over-long names are refused too;
    without it (an input of unknown meaning, maybe a prompt) only escapes and NUL are."""
    shown = _shown(value)
    if strict:
        if urls.CONTROL.search(value):
            return f"{shown} contains a control character (NUL, newline, ...): not a file name"
        if len(value) > MAX_FILE_NAME or any(len(seg.encode()) > MAX_SEGMENT for seg in re.split(r"[/\\]", value)):
            return (f"{shown} is too long for a file name (at most {MAX_FILE_NAME} characters, {MAX_SEGMENT} bytes "
                    "per folder or file name)")
        if urls.is_url(value):
            return f"{shown} is a URL: only the MediaLab loaders' source input takes URLs"
    m = _ANNOTATION.match(value)
    if _escapes(m.group(1) if m else value):
        return f"{shown} leaves ComfyUI's folders: absolute paths and '..' are not allowed"
    return None


def source_problem(value: str, policy: urls.UrlPolicy) -> tuple[str | None, urls.Target | None]:
    """A MediaLab loader's source: an object key, or a URL the pure URL rule allows (its addresses are
    checked at the edge, after DNS). Returns (problem, target to resolve)."""
    if urls.is_object_key(value):
        return None, None
    if urls.is_url(value):
        try:
            return None, urls.check_url(value, policy)
        except urls.UrlRefused as exc:
            return str(exc), None
    return (f"{_shown(value)} is neither an object key (sha256/<2 hex>/<64 hex>) nor an http(s) URL"), None


@dataclass
class GraphCheck:
    problems: list[str] = field(default_factory=list)
    # URL inputs that passed the pure rule: (where, target); the caller checks their resolved addresses.
    urls: list[tuple[NodeProblem, urls.Target]] = field(default_factory=list)


def _where(graph: Mapping[str, Any], nid: str, name: str) -> NodeProblem:
    node = graph.get(nid) or {}
    return NodeProblem(f"node '{title_of(node) or nid}' (#{nid} {node.get('class_type', '?')}) input '{name}'", nid,
                       name)


def _resolve(graph: Mapping[str, Any], value: Any) -> tuple[Any, str | None]:
    """Follow a link through pass-through nodes: (the literal, None), or (None, the computing node's id)."""
    seen: set[str] = set()
    while is_link(value):
        nid = value[0]
        node = graph.get(nid)
        if not isinstance(node, dict) or nid in seen:
            return None, None  # a dangling link or a cycle: the graph check reports it
        seen.add(nid)
        carrier = PASS_THROUGH.get(str(node.get("class_type", "")))
        if carrier is None:
            return None, nid
        inputs = node.get("inputs")
        value = inputs.get(carrier) if isinstance(inputs, dict) else None
    return value, None


def check_graph(graph: Mapping[str, Any], defs: Definitions | None, policy: urls.UrlPolicy,
                skip: Iterable[tuple[str, str]] = ()) -> GraphCheck:
    """Every file input of every node against the rule; ``skip``: (node id, input) pairs bound to input
    artifacts, whose values are replaced by stored names or keys before the graph is sent (and checked then)."""
    defs = defs or Definitions()
    skipped = set(skip)
    out = GraphCheck()
    for nid, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue  # not a node: the graph check reports it
        cls = str(node.get("class_type", ""))
        known = cls in defs.known
        files = defs.file_inputs.get(cls, frozenset())
        free = defs.free_text.get(cls, frozenset()) if known else frozenset()
        for name, value in inputs.items():
            if (nid, name) in skipped:
                continue
            strict = (known and name in files) or (cls, name) in PATH_STRINGS
            if not strict and (name in free or (not known and (cls, name) in FREE_TEXT_FALLBACK)):
                continue  # a prompt stays free; every other string value is checked for escapes
            where = _where(graph, nid, name)
            literal, computed_by = _resolve(graph, value)
            if computed_by is not None:
                if strict:
                    src = graph[computed_by].get("class_type", "?")
                    out.problems.append(where.extend(
                        f"takes its file name from node #{computed_by} ({src}), which computes it while the graph "
                        "runs: a file name must be a value in the graph or come from a parameter node"))
                continue
            if not isinstance(literal, str):
                continue
            if (cls, name) in SOURCE_INPUTS:
                problem, target = source_problem(literal, policy)
                if target is not None:
                    out.urls.append((where, target))
            else:
                problem = path_problem(literal, strict=strict)
            if problem:
                out.problems.append(where.extend(problem))
    return out


def url_policy(allowlist: Iterable[str], store_endpoint: str | None, store_secure: bool, private_ok: bool,
               max_bytes: int, timeout_s: float, store_bucket: str = "medialab") -> urls.UrlPolicy:
    """The URL rule's policy from settings (``url_*``, ``s3_endpoint``/``s3_secure``/``s3_bucket``)."""
    return urls.UrlPolicy.build(allowlist, store_endpoint, store_secure, private_ok, max_bytes, timeout_s,
                                store_bucket=store_bucket)
