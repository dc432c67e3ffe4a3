"""Template format v1: a manifest (``manifest.json``) and an API-format graph (``graph.json``); in the library
on disk they lie in ``<library>/<name>/v<N>/``, read by ``runtime.library``.

Pure logic only, no files: a version built and checked from its two dicts (``from_dicts``), its content hash,
the pydantic model of its parameters, binding parameter values into a copy of the graph by node title (never
by node id), the models a graph loads, a manifest read from the node pack's parameter nodes, and diffs.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from orchestrator.core.errors import InvalidInput, NotFound
from orchestrator.core.graph import NodeProblem, is_link, node_errors, nodes_by_title, sources, title_of

# Loader inputs that name a model file, by node class: (input name, models folder).
MODEL_INPUTS: dict[str, list[tuple[str, str]]] = {
    "UpscaleModelLoader": [("model_name", "upscale_models")],
    "CheckpointLoaderSimple": [("ckpt_name", "checkpoints")],
    "LoraLoader": [("lora_name", "loras")],
    "LoraLoaderModelOnly": [("lora_name", "loras")],
    "VAELoader": [("vae_name", "vae")],
    "CLIPVisionLoader": [("clip_name", "clip_vision")],
    "ControlNetLoader": [("control_net_name", "controlnet")],
    "IPAdapterModelLoader": [("ipadapter_file", "ipadapter")],
    "MediaLabFaceRestoreModelLoader": [("model_name", "facerestore_models")],  # this pack's (faces.py)
}


# Files that IPAdapter_plus's unified loaders find by name pattern, by preset (SD1.5 or SDXL names; which
# one a job needs depends on its checkpoint, so either satisfies the check): [(folder, regex, what)].
_CLIP_H = ("clip_vision", r"(ViT.H.14.*s32B.b79K|ipadapter.*sd15|sd1.?5.*model)\.(bin|safetensors)",
           "the ViT-H CLIP vision model")
_FACE_LORA = ("loras", r"faceid.*lora\.safetensors$", "a FaceID LoRA")
PRESET_FILES: dict[str, list[tuple[str, str, str]]] = {
    "LIGHT - SD1.5 only (low strength)": [("ipadapter", r"sd15.light(.v11)?\.(safetensors|bin)$", "IP-Adapter LIGHT"),
                                          _CLIP_H],
    "STANDARD (medium strength)": [("ipadapter", r"ip.adapter.(sd15|sdxl.vit.h)\.(safetensors|bin)$",
                                    "IP-Adapter STANDARD"), _CLIP_H],
    "PLUS (high strength)": [("ipadapter", r"(ip.adapter.plus.sd15|plus.sdxl.vit.h)\.(safetensors|bin)$",
                              "IP-Adapter PLUS"), _CLIP_H],
    "PLUS FACE (portraits)": [("ipadapter", r"plus.face.(sd15|sdxl.vit.h)\.(safetensors|bin)$",
                               "IP-Adapter PLUS FACE"), _CLIP_H],
    "FULL FACE - SD1.5 only (portraits stronger)": [("ipadapter", r"full.face.sd15\.(safetensors|bin)$",
                                                     "IP-Adapter FULL FACE"), _CLIP_H],
    "FACEID": [("ipadapter", r"faceid.(sd15|sdxl)\.(safetensors|bin)$", "IP-Adapter FACEID"), _FACE_LORA],
    "FACEID PLUS - SD1.5 only": [("ipadapter", r"faceid.plus.sd15\.(safetensors|bin)$", "IP-Adapter FACEID PLUS"),
                                 _FACE_LORA, _CLIP_H],
    "FACEID PLUS V2": [("ipadapter", r"faceid.plusv2.(sd15|sdxl)\.(safetensors|bin)$", "IP-Adapter FACEID PLUS V2"),
                       _FACE_LORA, _CLIP_H],
    "FACEID PORTRAIT (style transfer)": [("ipadapter", r"portrait(.v11)?.(sd15|sdxl)\.(safetensors|bin)$",
                                          "IP-Adapter FACEID PORTRAIT")],
}
PRESET_NODES = {"IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID"}


def model_patterns(graph: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(folder, regex, what) of the files a bound graph's loaders will look for by pattern."""
    found = set()
    for node in graph.values():
        if node.get("class_type") in PRESET_NODES:
            found.update(PRESET_FILES.get(str(node.get("inputs", {}).get("preset")), []))
    return found


class ParamType(StrEnum):
    string = "string"
    int = "int"
    float = "float"
    bool = "bool"
    choice = "choice"
    image = "image"
    video = "video"
    model = "model"


ARTIFACT_TYPES = {ParamType.image, ParamType.video}


class Binding(BaseModel):
    node: str = Field(description="Title of the node (``_meta.title``) the value goes into.")
    input: str


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    type: ParamType
    default: Any = None
    min: int | float | None = None
    max: int | float | None = None
    choices: list[Any] | None = None
    folder: str | None = Field(None, description="Models folder, for type model.")
    help: str = ""
    bind: Binding
    optional: bool = Field(False, description="May be left out (null) although it has no default.")
    bypass: dict[str, str | None] = Field(default_factory=dict, description=(
        "For an optional parameter left out: node title -> the input that stands in for the node. Each "
        "consumer of the node takes that input's link instead (in the order given), or, for null, loses the "
        "input (it must be optional there); nodes that then feed no output are dropped, so an optional branch "
        "(e.g. an IP-Adapter reference) disappears whole."))

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if self.type == ParamType.choice and not self.choices:
            raise ValueError(f"parameter {self.name}: type choice needs choices")
        if self.type == ParamType.model and not self.folder:
            raise ValueError(f"parameter {self.name}: type model needs folder")
        if self.bypass and not self.optional:
            raise ValueError(f"parameter {self.name}: bypass is only for optional parameters")
        return self

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional


class Output(BaseModel):
    node: str = Field(description="Title of an output node whose files are the job's results.")
    name: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    description: str = ""
    kind: Literal["image", "video", "audio", "model", "other"]
    timeout_s: float | None = None
    parameters: list[Parameter] = []
    outputs: list[Output] = Field(min_length=1)


class TemplateVersion(BaseModel):
    """One immutable version as read from disk."""

    name: str
    version: int
    manifest: Manifest
    graph: dict[str, Any]
    content_hash: str
    deprecated: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def params_schema(self) -> dict[str, Any]:
        return params_model(self).model_json_schema()


def content_hash(manifest: dict[str, Any], graph: dict[str, Any]) -> str:
    canon = json.dumps({"manifest": manifest, "graph": graph}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def from_dicts(name: str, version: int, manifest_raw: dict[str, Any], graph: dict[str, Any],
               where: str | None = None) -> TemplateVersion:
    """A version from its manifest and API-format graph, checked for consistency."""
    where = where or f"template {name}@v{version}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise InvalidInput(f"{where}: a template name is lowercase letters, digits and '-'")
    require_api_format(graph, where)
    try:
        manifest = Manifest.model_validate(manifest_raw)
    except ValidationError as exc:
        raise InvalidInput(f"{where}: bad manifest: {exc}") from exc
    check_graph(where, manifest, graph)
    return TemplateVersion(name=name, version=version, manifest=manifest, graph=graph,
                           content_hash=content_hash(manifest_raw, graph))


def require_api_format(graph: Any, where: str) -> None:
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise InvalidInput(f"{where}: this is ComfyUI's editor format; export the workflow in API format "
                           "(Workflow > Export (API)) and publish that")
    if not isinstance(graph, dict) or not graph or \
            not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise InvalidInput(f"{where}: not an API-format graph (node id -> class_type, inputs)")


def check_graph(where: str, manifest: Manifest, graph: dict[str, Any]) -> None:
    """Every binding and output names a node title that exists exactly once in the graph."""
    require_api_format(graph, where)
    titles = nodes_by_title(graph)
    for p in manifest.parameters:
        if p.bind.node not in titles:
            raise InvalidInput(f"{where}: parameter {p.name} binds to node title '{p.bind.node}', "
                               "which is missing or not unique in the graph")
    for p in manifest.parameters:
        for node, input_name in p.bypass.items():
            if node not in titles:
                raise InvalidInput(f"{where}: parameter {p.name} bypasses node title '{node}', "
                                   "which is missing or not unique in the graph")
            if input_name is not None and not is_link(graph[titles[node]]["inputs"].get(input_name)):
                raise InvalidInput(f"{where}: parameter {p.name} bypasses '{node}' through its input "
                                   f"'{input_name}', which is not a link")
    for o in manifest.outputs:
        if o.node not in titles:
            raise InvalidInput(f"{where}: output {o.name} names node title '{o.node}', "
                               "which is missing or not unique in the graph")


class Versioned(Protocol):
    version: int
    deprecated: bool


V = TypeVar("V", bound=Versioned)


def pick_version(mine: Sequence[V], what: str, version: int | None = None) -> V:
    """Of one thing's versions (oldest first), the one named, or the newest not deprecated when version is
    None; NotFound says which versions there are. ``what``: "template 'x'", "pipeline 'y'"."""
    if version is None:
        current = [v for v in mine if not v.deprecated]
        if not current:
            raise NotFound(f"every version of {what} is deprecated; name a version explicitly")
        return current[-1]
    for v in mine:
        if v.version == version:
            return v
    raise NotFound(f"{what} has no version {version} (versions: {', '.join(f'v{v.version}' for v in mine)})")


def pick(versions: list[TemplateVersion], name: str, version: int | None = None) -> TemplateVersion:
    """The named version, or the newest one when version is None."""
    mine = [t for t in versions if t.name == name]
    if not mine:
        raise unknown_template(name, (t.name for t in versions))
    return pick_version(mine, f"template '{name}'", version)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` (or ``'x' or 'y'``) naming the known names closest to a misspelt one, or ``""``."""
    close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_template(name: str, known: Iterable[str]) -> NotFound:
    """The error for a name no version has (``pick``'s, for a caller that read only that name's versions)."""
    names = sorted(set(known))
    return NotFound(f"unknown template '{name}'{did_you_mean(name, names)} (known: {', '.join(names) or 'none'})")


def unknown_parameter(t: TemplateVersion, name: str) -> str:
    """What is said of a parameter the template does not have: the closest names and every valid one."""
    valid = [p.name for p in t.manifest.parameters]
    return f"unknown parameter {name!r}{did_you_mean(name, valid) or ';'} valid: {', '.join(valid) or 'none'}"


_PY_TYPES: dict[ParamType, type] = {
    ParamType.string: str, ParamType.int: int, ParamType.float: float, ParamType.bool: bool,
    ParamType.image: str, ParamType.video: str, ParamType.model: str,
}


_PARAMS_MODELS: dict[tuple[str, int, str], type[BaseModel]] = {}


def params_model(t: TemplateVersion) -> type[BaseModel]:
    """A pydantic model of the template's parameters; its JSON Schema draws the frontend's form.
    Built once per version (building one costs milliseconds, every submit needs it), keyed on the version's
    content hash: the hash covers the whole manifest (title, parameters), so another content is another key."""
    key = (t.name, t.version, t.content_hash)
    model = _PARAMS_MODELS.get(key)
    if model is None:
        if len(_PARAMS_MODELS) >= 1024:
            _PARAMS_MODELS.clear()
        model = _PARAMS_MODELS[key] = _build_params_model(t)
    return model


def _build_params_model(t: TemplateVersion) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for p in t.manifest.parameters:
        py: Any = Literal[tuple(p.choices)] if p.type == ParamType.choice else _PY_TYPES[p.type]  # type: ignore[misc]
        if p.optional:
            py = py | None
        extra: dict[str, Any] = {"x-medialab-type": p.type.value}
        if p.folder:
            extra["x-medialab-folder"] = p.folder
        if p.type in ARTIFACT_TYPES:
            extra["x-medialab-artifact"] = p.type.value
        numeric = p.type in (ParamType.int, ParamType.float)
        fields[p.name] = (py, Field(
            ... if p.required else p.default, description=p.help or None,
            ge=p.min if numeric else None, le=p.max if numeric else None,
            strict=None if p.type == ParamType.choice else True, json_schema_extra=extra))
    model = create_model(f"Params_{t.name.replace('-', '_')}_v{t.version}",
                         __config__=ConfigDict(extra="forbid"), **fields)
    model.__doc__ = t.manifest.title
    return model


def validate_params(t: TemplateVersion, values: dict[str, Any]) -> dict[str, Any]:
    """Validated parameters with defaults filled in; InvalidInput names each bad field."""
    try:
        return params_model(t).model_validate(values).model_dump()
    except ValidationError as exc:
        errors, problems = [], []
        for e in exc.errors():
            where = ".".join(map(str, e["loc"]))
            if e["type"] == "extra_forbidden":  # pydantic's "Extra inputs are not permitted" names nothing valid
                message = unknown_parameter(t, where)
                problems.append(message)
            else:
                message = e["msg"]
                problems.append(f"{where or '(root)'}: {message}")
            errors.append({"param": where, "message": message})
        raise InvalidInput(f"bad parameters for {t.ref}: " + "; ".join(problems), errors=errors) from exc


def bind(t: TemplateVersion, values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the graph with each parameter's value written into its bound node input.

    An optional parameter given as None removes its branch (see ``Parameter.bypass``)."""
    graph = copy.deepcopy(t.graph)
    titles = nodes_by_title(graph)
    left_out = [p for p in t.manifest.parameters if p.optional and p.name in values and values[p.name] is None]
    for p in left_out:
        for node, input_name in p.bypass.items():
            _bypass(graph, titles[node], input_name)
    for p in t.manifest.parameters:
        if p.name in values and p not in left_out and titles[p.bind.node] in graph:
            graph[titles[p.bind.node]]["inputs"][p.bind.input] = values[p.name]
    if left_out:
        keep = _feeding({titles[o.node] for o in t.manifest.outputs}, graph)
        graph = {k: v for k, v in graph.items() if k in keep}
    return graph


def _bypass(graph: dict[str, Any], node_id: str, input_name: str | None) -> None:
    """Every link from the node's outputs now comes from what feeds its ``input_name`` (None: is dropped)."""
    source = graph[node_id]["inputs"][input_name] if input_name else None
    for node in graph.values():
        for name, value in list(node["inputs"].items()):
            if is_link(value) and str(value[0]) == node_id:
                if source is None:
                    del node["inputs"][name]
                else:
                    node["inputs"][name] = list(source)
    del graph[node_id]


def _feeding(outputs: set[str], graph: dict[str, Any]) -> set[str]:
    """The output nodes and every node they depend on."""
    seen, todo = set(), list(outputs)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        todo.extend(sources(graph[node_id]))
    return seen


def defaults_from_graph(manifest: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """The manifest with each parameter's default taken from the value its bound input has in the graph
    (what the artist left in the editor); required parameters and linked inputs are left alone."""
    titles = nodes_by_title(graph)
    params = []
    for p in manifest.get("parameters", []):
        node = graph.get(titles.get(p["bind"]["node"], ""), {})
        value = node.get("inputs", {}).get(p["bind"]["input"])
        if p.get("default") is not None and value is not None and not is_link(value):
            p = {**p, "default": value}
        params.append(p)
    return {**manifest, "parameters": params}


def merge_manifest(origin: dict[str, Any], derived: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a workflow opened from a version (``origin``, its manifest) to which the artist may have
    added parameter nodes (``derived``: ``manifest_from_graph`` of the titled ``graph``).

    The origin's parameters stay while their bound input is still a value of a node in the graph (with the
    value left there as the default, as ``defaults_from_graph``); one whose input a parameter node now feeds,
    or whose node is gone, is dropped, and a parameter node of the same name replaces it (keeping its help when
    the node has none). The origin's outputs stay while all their nodes are there, else the save nodes' are
    taken."""
    kept = defaults_from_graph(origin, graph)
    titles = nodes_by_title(graph)
    added = {p["name"] for p in derived["parameters"]}

    def bound_to_value(p: dict[str, Any]) -> bool:
        node = graph.get(titles.get(p["bind"]["node"], ""))
        return node is not None and not is_link((node.get("inputs") or {}).get(p["bind"]["input"]))

    params = [p for p in kept.get("parameters", []) if p["name"] not in added and bound_to_value(p)]
    replaced = {p["name"]: p for p in kept.get("parameters", []) if p["name"] in added}
    derived_params = [{**p, "help": replaced[p["name"]].get("help", "")} if p["name"] in replaced
                      and not p.get("help") else p for p in derived["parameters"]]
    outputs = kept.get("outputs") or []
    if not outputs or any(o["node"] not in titles for o in outputs):
        outputs = derived["outputs"]
    return {**kept, "parameters": params + derived_params, "outputs": outputs}


def model_refs(graph: dict[str, Any]) -> set[tuple[str, str]]:
    """(folder, file) of every model a bound graph loads by name."""
    refs = set()
    for node in graph.values():
        for input_name, folder in MODEL_INPUTS.get(node.get("class_type", ""), []):
            value = node.get("inputs", {}).get(input_name)
            if isinstance(value, str):
                refs.add((folder, value))
    return refs


def model_problems(graph: dict[str, Any], absent: set[tuple[str, str]]) -> list[NodeProblem]:
    """The nodes of a bound graph that name one of the ``absent`` (folder, file) models: a loader's file input,
    or a model parameter node's value."""
    found = []
    for nid, node in graph.items():
        cls, inputs = node.get("class_type", ""), node.get("inputs") or {}
        named = list(MODEL_INPUTS.get(cls, []))
        if cls == "MediaLabParamModel":
            named.append(("value", str(inputs.get("folder") or "checkpoints")))
        for name, folder in named:
            if (folder, inputs.get(name)) in absent:
                found.append(NodeProblem(f"node '{title_of(node) or nid}' (#{nid} {cls}) input '{name}': no server "
                                         f"of the pool has {folder}/{inputs[name]}", nid, name))
    return found


def output_node_ids(t: TemplateVersion) -> dict[str, str]:
    """Output node id -> output name."""
    titles = nodes_by_title(t.graph)
    return {titles[o.node]: o.name for o in t.manifest.outputs}


# -- parameters from the node pack's parameter nodes -------------------------------------------------
PARAM_NODES: dict[str, tuple[ParamType, str]] = {  # class -> (type, the input that carries the value)
    "MediaLabParamText": (ParamType.string, "value"), "MediaLabParamInt": (ParamType.int, "value"),
    "MediaLabParamFloat": (ParamType.float, "value"), "MediaLabParamBool": (ParamType.bool, "value"),
    "MediaLabParamChoice": (ParamType.choice, "value"), "MediaLabParamModel": (ParamType.model, "value"),
    "MediaLabParamImage": (ParamType.image, "image"), "MediaLabParamVideo": (ParamType.video, "file"),
}
OUTPUT_NODES = {"SaveImage", "SaveVideo", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveAudio",
                "MediaLabSaveImage", "MediaLabSaveVideo"}


def manifest_from_graph(graph: dict[str, Any], title: str, kind: str, description: str = "",
                        timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A manifest read from the graph: one parameter per parameter node (its ``name`` widget; default,
    range, choices, folder and help from its widgets), one output per save node. Nodes are given titles
    where they have none, so bindings survive renumbering; returns (manifest, titled graph)."""
    require_api_format(graph, f"template {title!r}")
    graph = copy.deepcopy(graph)
    taken = {title_of(n) for n in graph.values()}
    params, outputs, param_nodes = [], [], []

    def titled(node: dict[str, Any], wanted: str) -> str:
        current = title_of(node)
        if current and sum(title_of(n) == current for n in graph.values()) == 1:
            return current
        candidate, i = wanted, 2
        while candidate in taken:
            candidate, i = f"{wanted} {i}", i + 1
        taken.add(candidate)
        node.setdefault("_meta", {})["title"] = candidate
        return candidate

    for node_id in sorted(graph, key=lambda k: (len(k), k)):
        node = graph[node_id]
        cls, inputs = node.get("class_type"), node.get("inputs") or {}
        if cls in PARAM_NODES:
            ptype, carrier = PARAM_NODES[cls]
            name = str(inputs.get("name") or "").strip()
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                problem = NodeProblem(f"parameter node #{node_id} ({cls}) has name {name!r}: use lowercase "
                                      "letters, digits and _", node_id, "name")
                raise InvalidInput(problem, nodes=node_errors([problem]))
            param: dict[str, Any] = {"name": name, "type": ptype.value, "help": inputs.get("help") or "",
                                     "bind": {"node": titled(node, f"param {name}"), "input": carrier}}
            if ptype not in ARTIFACT_TYPES:
                param["default"] = inputs.get(carrier)
            if ptype in (ParamType.int, ParamType.float):
                param |= {k: inputs[k] for k in ("min", "max") if isinstance(inputs.get(k), int | float)}
            if ptype == ParamType.choice:
                param["choices"] = [c.strip() for c in str(inputs.get("choices") or "").split(",") if c.strip()]
            if ptype == ParamType.model:
                param["folder"] = inputs.get("folder") or "checkpoints"
            params.append(param)
            param_nodes.append(node_id)
        elif cls in OUTPUT_NODES:
            outputs.append({"node": titled(node, "Output"), "name": f"output{len(outputs) + 1}"
                            if outputs else "output"})
    names = [p["name"] for p in params]
    if len(names) != len(set(names)):
        twice = sorted({n for n in names if names.count(n) > 1})
        problems = [NodeProblem(f"parameter node #{nid} is named {p['name']!r}, as another one", nid, "name")
                    for nid, p in zip(param_nodes, params, strict=True) if p["name"] in twice]
        raise InvalidInput(f"two parameter nodes share a name: {twice}", nodes=node_errors(problems))
    if not outputs:
        raise InvalidInput("the graph has no save node (SaveImage, SaveVideo, ...): nothing would be stored")
    manifest = {"title": title, "description": description, "kind": kind, "parameters": params, "outputs": outputs}
    if timeout_s:
        manifest["timeout_s"] = timeout_s
    return manifest, graph


def diff(a: TemplateVersion, b: TemplateVersion) -> dict[str, Any]:
    """What changed from a to b: the manifest's own fields (title, description, kind, timeout), parameters (by
    name) and nodes (by title, else id); ``details`` gives, for each changed one, the fields (a node's literal
    inputs, a link written ``<- source``) with their old and new value."""
    pa = {p.name: p.model_dump(mode="json") for p in a.manifest.parameters}
    pb = {p.name: p.model_dump(mode="json") for p in b.manifest.parameters}

    def keyed(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {title_of(n) or f"#{i}": n for i, n in graph.items()}

    na, nb = keyed(a.graph), keyed(b.graph)

    def changed(k: str) -> bool:
        return (na[k]["class_type"], _literals(na[k])) != (nb[k]["class_type"], _literals(nb[k]))

    def shown(graph: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
        out = {"class_type": node.get("class_type")}
        for name, value in (node.get("inputs") or {}).items():
            out[name] = f"<- {title_of(graph.get(str(value[0]))) or '#' + str(value[0])}" if is_link(value) else value
        return out

    changed_params = sorted(k for k in pa.keys() & pb.keys() if pa[k] != pb[k])
    changed_nodes = sorted(k for k in na.keys() & nb.keys() if changed(k))
    own = ("title", "description", "kind", "timeout_s")
    return {
        "fields": _changes({k: getattr(a.manifest, k) for k in own}, {k: getattr(b.manifest, k) for k in own}),
        "parameters": {"added": sorted(pb.keys() - pa.keys()), "removed": sorted(pa.keys() - pb.keys()),
                       "changed": changed_params, "details": {k: _changes(pa[k], pb[k]) for k in changed_params}},
        "nodes": {"added": sorted(nb.keys() - na.keys()), "removed": sorted(na.keys() - nb.keys()),
                  "changed": changed_nodes,
                  "details": {k: _changes(shown(a.graph, na[k]), shown(b.graph, nb[k])) for k in changed_nodes}},
    }


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"from": old.get(k), "to": new.get(k)}
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def _literals(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (node.get("inputs") or {}).items() if not is_link(v)}
