"""ComfyUI's editor format (the "workflow" its Save writes) to the API format (what /prompt takes) and back.

Pure logic, no I/O: both directions need the server's ``/object_info``, because the editor stores widget
values by position (``widgets_values``) and the API format by input name. The forward direction does what
ComfyUI's frontend does in ``graphToPrompt`` (frontend 1.32.9, the one ComfyUI 0.3.75 serves):

- widgets are the node's widget inputs (INT, FLOAT, STRING, BOOLEAN, COMBO; not ``forceInput``) in
  ``input_order`` (required, then optional); an INT named seed/noise_seed (or any input with
  ``control_after_generate``) is followed by its control value ("fixed", "randomize", ...), and an image/video
  upload input adds an ``upload`` button widget after all others; neither reaches the API graph;
- a widget input with a link takes the link; a PrimitiveNode's value is pushed into the widgets it feeds;
- muted nodes (mode 2) are dropped, and an input linked to one is dropped with them; bypassed nodes (mode 4)
  are routed around (the input of matching type passes through); Reroute nodes are followed; Note and
  MarkdownNote are skipped;
- the title is ``_meta.title`` (the class's display name when the node has no title of its own).

The reverse (:func:`to_editor`) lays an API graph out in topological columns, for ``templates open``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from orchestrator.core.errors import InvalidInput
from orchestrator.core.graph import is_link, sources, title_of

MUTED, BYPASSED = 2, 4
REROUTE, PRIMITIVE = "Reroute", "PrimitiveNode"
NOTES = {"Note", "MarkdownNote"}
VIRTUAL = {REROUTE, PRIMITIVE} | NOTES  # the frontend's own nodes: never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "randomize", "increment", "decrement"}
CONTROL, UPLOAD = "control_after_generate", "upload"
UPLOADS = {"image_upload": "image", "video_upload": "video"}  # input option -> the upload widget's value
SEED_NAMES = {"seed", "noise_seed"}
UNSET = "medialab_unset"  # node property: widget inputs the API graph left out (see to_editor)


@dataclass(frozen=True)
class Widget:
    """One entry of a node's ``widgets_values``: a widget input, or a seed control / upload button."""

    name: str
    input: str | None  # the API input it fills; None for the control and upload widgets
    default: Any


# -- node definitions --------------------------------------------------------------------------------
def ordered_inputs(info: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, type, options) of every required then optional input, in the server's ``input_order``."""
    out = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        specs = (info.get("input") or {}).get(section) or {}
        names = [n for n in order.get(section) or specs if n in specs]
        for name in names:
            spec = specs[name]
            kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
            opts = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, opts))
    return out


def is_widget(kind: Any, opts: dict[str, Any]) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def _default(kind: Any, opts: dict[str, Any]) -> Any:
    if "default" in opts:
        return opts["default"]
    choices = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind if isinstance(kind, str) else "", "")


def _has_control(name: str, kind: Any, opts: dict[str, Any]) -> bool:
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return kind == "INT" and name in SEED_NAMES


def widgets_of(info: dict[str, Any]) -> list[Widget]:
    """The node's widgets in the order of its ``widgets_values``."""
    widgets, uploads = [], []
    for name, kind, opts in ordered_inputs(info):
        if not is_widget(kind, opts):
            continue
        widgets.append(Widget(name, name, _default(kind, opts)))
        if _has_control(name, kind, opts):
            widgets.append(Widget(CONTROL, None, "fixed"))
        uploads += [Widget(UPLOAD, None, value) for key, value in UPLOADS.items() if opts.get(key)]
    return widgets + uploads[:1]


def display_name(info: dict[str, Any] | None, cls: str) -> str:
    return (info or {}).get("display_name") or cls


def is_editor_format(graph: Any) -> bool:
    """ComfyUI's editor format ("workflow") has ``nodes`` and ``links`` lists; the API format has neither."""
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and isinstance(graph.get("links"), list)


# -- editor -> API -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    id: int
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any


def _links(workflow: dict[str, Any]) -> dict[int, Link]:
    links = {}
    for raw in workflow["links"]:
        if isinstance(raw, list) and len(raw) >= 5:
            link = Link(raw[0], str(raw[1]), int(raw[2]), str(raw[3]), int(raw[4]), raw[5] if len(raw) > 5 else "*")
        elif isinstance(raw, dict):
            link = Link(raw["id"], str(raw["origin_id"]), int(raw["origin_slot"]), str(raw["target_id"]),
                        int(raw["target_slot"]), raw.get("type", "*"))
        else:
            raise InvalidInput(f"editor-format workflow: cannot read link {raw!r}")
        links[link.id] = link
    return links


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph's rule: '*' or empty matches anything, else the comma-separated type lists share one."""
    if a in ("*", "", None, 0) or b in ("*", "", None, 0):
        return True
    sa, sb = ({t.strip().lower() for t in str(x).split(",")} for x in (a, b))
    return bool(sa & sb)


def _node_label(node: dict[str, Any]) -> str:
    title = node.get("title")
    return f"node #{node.get('id')} ({node.get('type')}{', titled ' + repr(title) if title else ''})"


def _refuse_unsupported(workflow: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> None:
    subgraphs = {sg.get("id") for sg in ((workflow.get("definitions") or {}).get("subgraphs") or [])
                 if isinstance(sg, dict)}
    for node in nodes.values():
        cls = str(node.get("type"))
        if cls in subgraphs:
            raise InvalidInput(f"{_node_label(node)} is a subgraph; subgraphs are not supported yet: unpack it in "
                               "ComfyUI (right-click > Unpack Subgraph), save and publish again")
        if cls.startswith(("workflow>", "workflow/")):
            raise InvalidInput(f"{_node_label(node)} is a group node; convert it back to nodes in ComfyUI "
                               "(right-click > Convert to nodes), save and publish again")


def to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API-format graph of an editor-format workflow, as ComfyUI's Workflow > Export (API) gives it."""
    if not is_editor_format(workflow):
        raise InvalidInput("not an editor-format workflow (a JSON object with 'nodes' and 'links' lists)")
    nodes: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if not isinstance(node, dict) or "id" not in node or "type" not in node:
            raise InvalidInput(f"editor-format workflow: a node without id or type: {str(node)[:120]}")
        nodes[str(node["id"])] = node
    if not nodes:
        raise InvalidInput("the editor-format workflow has no nodes")
    _refuse_unsupported(workflow, nodes)
    links = _links(workflow)
    real = {nid: n for nid, n in nodes.items() if n["type"] not in VIRTUAL and n.get("mode", 0) != MUTED}
    unknown = [n for n in real.values() if n.get("mode", 0) != BYPASSED and n["type"] not in object_info]
    if unknown:
        raise InvalidInput("unknown node classes (is a node pack missing on the server?): "
                           + "; ".join(_node_label(n) for n in unknown))

    values = {nid: _widget_values(n, object_info[n["type"]]) for nid, n in real.items()
              if n.get("mode", 0) != BYPASSED}
    for node in nodes.values():
        if node["type"] == PRIMITIVE and node.get("widgets_values"):
            _push_primitive(node, node["widgets_values"][0], nodes, links, values, set())

    output: dict[str, Any] = {}
    for nid, node in real.items():
        if node.get("mode", 0) == BYPASSED:
            continue
        inputs = {k: {"__value__": v} if isinstance(v, list) else v for k, v in values[nid].items()}
        for inp in node.get("inputs") or []:
            if inp.get("link") is None or inp["link"] not in links:
                continue
            source = _resolve(links[inp["link"]], inp.get("type"), nodes, links, set())
            if source is not None:
                inputs[inp["name"]] = [source[0], source[1]]
        info = object_info[node["type"]]
        defaults = {w.input: w.default for w in widgets_of(info) if w.input}
        for name in (node.get("properties") or {}).get(UNSET) or []:
            if name in inputs and inputs[name] == defaults.get(name):
                del inputs[name]  # absent from the API graph it was opened from, and left at its default
        output[nid] = {"inputs": inputs, "class_type": node["type"],
                       "_meta": {"title": node.get("title") or display_name(info, node["type"])}}
    for node in output.values():  # inputs fed by muted nodes go with them
        node["inputs"] = {k: v for k, v in node["inputs"].items()
                          if not (isinstance(v, list) and len(v) == 2 and v[0] not in output)}
    return output


def _widget_values(node: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Input name -> value of the node's widgets (positional ``widgets_values``, or a dict by name)."""
    raw = node.get("widgets_values")
    widgets = widgets_of(info)
    if isinstance(raw, dict):
        return {w.input: raw[w.input] for w in widgets if w.input and w.input in raw}
    raw = list(raw or [])
    out: dict[str, Any] = {}
    i = 0
    for w in widgets:
        if i >= len(raw):
            break
        if w.name == CONTROL and raw[i] not in CONTROL_VALUES:
            continue  # saved without its control value
        if w.input:
            out[w.input] = raw[i]
        i += 1
    return out


def _push_primitive(node: dict[str, Any], value: Any, nodes: dict[str, dict[str, Any]], links: dict[int, Link],
                    values: dict[str, dict[str, Any]], seen: set[str]) -> None:
    """A PrimitiveNode's value goes into every widget its output feeds (through Reroute nodes too)."""
    seen.add(str(node["id"]))
    for out in node.get("outputs") or []:
        for link_id in out.get("links") or []:
            link = links.get(link_id)
            target = nodes.get(link.target) if link else None
            if target is None or link.target in seen:
                continue
            if target["type"] == REROUTE:
                _push_primitive(target, value, nodes, links, values, seen)
                continue
            inputs = target.get("inputs") or []
            if link.target in values and link.target_slot < len(inputs):
                inp = inputs[link.target_slot]
                name = (inp.get("widget") or {}).get("name") or inp.get("name")
                values[link.target][name] = value


def _resolve(link: Link, wanted: Any, nodes: dict[str, dict[str, Any]], links: dict[int, Link],
             seen: set[int]) -> tuple[str, int] | None:
    """The (node id, output slot) a link really comes from, past Reroute and bypassed nodes."""
    if link.id in seen:
        raise InvalidInput(f"editor-format workflow: link {link.id} is part of a loop of Reroute/bypassed nodes")
    seen.add(link.id)
    origin = nodes.get(link.origin)
    if origin is None:
        return None
    inputs = origin.get("inputs") or []
    if origin["type"] == REROUTE:
        upstream = inputs[0].get("link") if inputs else None
        return _resolve(links[upstream], wanted, nodes, links, seen) if upstream in links else None
    if origin["type"] in VIRTUAL:
        return None  # a PrimitiveNode: its value is already in the widget
    if origin.get("mode", 0) == BYPASSED:
        index = _bypass_slot(origin, link.origin_slot, wanted)
        upstream = inputs[index].get("link") if 0 <= index < len(inputs) else None
        return _resolve(links[upstream], wanted, nodes, links, seen) if upstream in links else None
    return link.origin, link.origin_slot


def _bypass_slot(node: dict[str, Any], slot: int, wanted: Any) -> int:
    """The input a bypassed node passes through to its output ``slot`` (the frontend's rule)."""
    inputs, outputs = node.get("inputs") or [], node.get("outputs") or []
    if wanted in ("*", "", None):
        return slot if len(inputs) > slot else 0
    out_type = outputs[slot].get("type") if slot < len(outputs) else wanted
    if slot < len(inputs) and _compatible(inputs[slot].get("type"), out_type):
        return slot
    exact = [i for i, inp in enumerate(inputs) if inp.get("type") == wanted]
    if exact:
        return exact[0]
    return next((i for i, inp in enumerate(inputs) if _compatible(inp.get("type"), wanted)), -1)


# -- API -> editor -------------------------------------------------------------------------------------
COLUMN_W, GAP = 380, 40


def to_editor(graph: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """An editor-format workflow of an API graph: nodes in topological columns, titles kept, seeds "fixed".

    Inputs the server's node definitions do not know cannot be shown in the editor; they are listed in
    ``extra.medialab.dropped_inputs`` (``node id.input``). Widget inputs the graph leaves out show their
    default and are named in the node property ``medialab_unset``: left at that default, :func:`to_api`
    leaves them out again, so the round trip gives back the same graph.
    """
    unknown = [f"#{nid} ({n.get('class_type')})" for nid, n in graph.items() if n.get("class_type") not in object_info]
    if unknown:
        raise InvalidInput("cannot lay out node classes the server does not know: " + ", ".join(unknown))
    ids = _editor_ids(graph)
    depth = _depths(graph)
    order = sorted(graph, key=lambda k: (depth[k], ids[k]))
    nodes: dict[str, dict[str, Any]] = {}
    links: list[list[Any]] = []
    dropped: list[str] = []
    column_y: dict[int, float] = {}
    for position, key in enumerate(order):
        api_node = graph[key]
        cls = api_node["class_type"]
        info = object_info[cls]
        given = api_node.get("inputs") or {}
        specs = ordered_inputs(info)
        widgets = widgets_of(info)
        sockets = [(n, k) for n, k, o in specs if not is_widget(k, o)]
        widget_inputs = [(n, k) for n, k, o in specs if is_widget(k, o)]
        known = {n for n, _k, _o in specs}
        dropped += [f"{key}.{name}" for name in given if name not in known]
        inputs = [{"name": n, "type": k, "link": None} for n, k in sockets]
        inputs += [{"name": n, "type": "COMBO" if isinstance(k, list) else k, "widget": {"name": n}, "link": None}
                   for n, k in widget_inputs]
        unset = [w.input for w in widgets if w.input and w.input not in given]
        values = []
        for w in widgets:
            value = given.get(w.input, w.default) if w.input else w.default
            if is_link(value):
                value = w.default
            values.append(value["__value__"] if isinstance(value, dict) and "__value__" in value else value)
        outputs = [{"name": (info.get("output_name") or info["output"])[i], "type": _slot_type(t), "links": None}
                   for i, t in enumerate(info.get("output") or [])]
        height = 30 + 22 * max(len(sockets), len(outputs)) + 24 * len(widgets) + 60 * sum(
            1 for _n, k, o in specs if k == "STRING" and o.get("multiline"))
        col = depth[key]
        y = column_y.get(col, 40.0)
        column_y[col] = y + height + GAP
        node: dict[str, Any] = {"id": ids[key], "type": cls, "pos": [40 + col * COLUMN_W, y], "size": [320, height],
                                "flags": {}, "order": position, "mode": 0, "inputs": inputs, "outputs": outputs}
        title = title_of(api_node)
        if title and title != display_name(info, cls):
            node["title"] = title
        node["properties"] = {"Node name for S&R": cls} | ({UNSET: unset} if unset else {})
        node["widgets_values"] = values
        nodes[key] = node
    for key in order:
        for slot, inp in enumerate(nodes[key]["inputs"]):
            value = (graph[key].get("inputs") or {}).get(inp["name"])
            if not is_link(value) or str(value[0]) not in nodes:
                continue
            source = nodes[str(value[0])]
            out_slot = int(value[1])
            if out_slot >= len(source["outputs"]):
                raise InvalidInput(f"node #{key} input {inp['name']} links to output {out_slot} of node "
                                   f"#{value[0]}, which has {len(source['outputs'])} outputs")
            link_id = len(links) + 1
            links.append([link_id, source["id"], out_slot, nodes[key]["id"], slot, source["outputs"][out_slot]["type"]])
            inp["link"] = link_id
            source["outputs"][out_slot]["links"] = (source["outputs"][out_slot]["links"] or []) + [link_id]
    canon = json.dumps(graph, sort_keys=True, separators=(",", ":"))
    workflow: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "medialab:" + canon)), "revision": 0,
        "last_node_id": max((n["id"] for n in nodes.values()), default=0), "last_link_id": len(links),
        "nodes": [nodes[k] for k in order], "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
    }
    if dropped:
        workflow["extra"]["medialab"] = {"dropped_inputs": dropped}
    return workflow


def _slot_type(kind: Any) -> Any:
    return "COMBO" if isinstance(kind, list) else kind


def _editor_ids(graph: dict[str, Any]) -> dict[str, int]:
    """Editor node ids are numbers: numeric API ids are kept, others get the next free numbers."""
    ids = {k: int(k) for k in graph if str(k).isdigit()}
    nxt = max(ids.values(), default=0)
    for k in graph:
        if k not in ids:
            nxt += 1
            ids[k] = nxt
    return ids


def _depths(graph: dict[str, Any]) -> dict[str, int]:
    """Column of each node: 0 for nodes without linked inputs, else one past its deepest source."""
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def walk(key: str) -> int:
        if key in depth:
            return depth[key]
        if key in visiting:
            raise InvalidInput(f"the graph has a cycle through node #{key}")
        visiting.add(key)
        feeding = [source for source in sources(graph[key]) if source in graph]
        depth[key] = 1 + max(map(walk, feeding)) if feeding else 0
        visiting.discard(key)
        return depth[key]

    for key in graph:
        walk(key)
    return depth

