import pytest

from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, NotFound

GRAPH = {
    "1": {"class_type": "MediaLabParamImage", "inputs": {"name": "image", "image": "a.png", "help": "The frame."}},
    "2": {"class_type": "MediaLabParamFloat", "inputs": {"name": "scale", "value": 2.0, "min": 0.5, "max": 4.0}},
    "3": {"class_type": "MediaLabParamChoice", "inputs": {"name": "method", "value": "bilinear",
                                                           "choices": "nearest-exact, bilinear"}},
    "4": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": ["3", 0],
                                                    "scale_by": ["2", 0]}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
}


def test_manifest_from_parameter_and_save_nodes() -> None:
    manifest, graph = tpl.manifest_from_graph(GRAPH, "Scale", "image")
    params = {p["name"]: p for p in manifest["parameters"]}
    assert params["image"] == {"name": "image", "type": "image", "help": "The frame.",
                               "bind": {"node": "param image", "input": "image"}}
    assert params["scale"] | {} == {"name": "scale", "type": "float", "help": "", "default": 2.0, "min": 0.5,
                                    "max": 4.0, "bind": {"node": "param scale", "input": "value"}}
    assert params["method"]["choices"] == ["nearest-exact", "bilinear"]
    assert manifest["outputs"] == [{"node": "Output", "name": "output"}]
    t = tpl.from_dicts("scale", 1, manifest, graph)
    assert tpl.validate_params(t, {"image": "art1"}) == {"image": "art1", "scale": 2.0, "method": "bilinear"}
    # renumbered nodes (re-saved in the editor) bind the same way: titles, not ids
    renumbered = {str(int(k) + 40): {**n, "inputs": {i: [str(int(v[0]) + 40), v[1]] if isinstance(v, list) else v
                                                     for i, v in n["inputs"].items()}} for k, n in graph.items()}
    moved = tpl.from_dicts("scale", 2, manifest, renumbered)
    assert tpl.bind(moved, {"scale": 3.0})["42"]["inputs"]["value"] == 3.0


def test_bad_parameter_nodes_are_named() -> None:
    with pytest.raises(InvalidInput, match="parameter node #2 .* has name 'Bad Name'") as bad:
        tpl.manifest_from_graph({**GRAPH, "2": {**GRAPH["2"], "inputs": {"name": "Bad Name", "value": 1.0}}},
                                "t", "image")
    assert [(n["node"], n["input"]) for n in bad.value.extra["nodes"]] == [("2", "name")]  # shown on that node
    with pytest.raises(InvalidInput, match="two parameter nodes share a name") as twice:
        tpl.manifest_from_graph({**GRAPH, "6": GRAPH["2"]}, "t", "image")
    assert [n["node"] for n in twice.value.extra["nodes"]] == ["2", "6"]
    with pytest.raises(InvalidInput, match="no save node"):
        tpl.manifest_from_graph({k: v for k, v in GRAPH.items() if k != "5"}, "t", "image")
    with pytest.raises(InvalidInput, match="editor format"):
        tpl.from_dicts("t", 1, {}, {"nodes": [], "links": []})


def test_diff_and_deprecation() -> None:
    m1, g1 = tpl.manifest_from_graph(GRAPH, "Scale", "image")
    g2 = {**GRAPH, "5": {**GRAPH["5"], "inputs": {**GRAPH["5"]["inputs"], "filename_prefix": "y"}}}
    g2 = {k: v for k, v in g2.items() if k != "3"} | {"4": {**GRAPH["4"], "inputs": {
        **GRAPH["4"]["inputs"], "upscale_method": "area"}}}
    m2, g2 = tpl.manifest_from_graph(g2, "Scale", "image")
    a, b = tpl.from_dicts("scale", 1, m1, g1), tpl.from_dicts("scale", 2, m2, g2)
    d = tpl.diff(a, b)
    assert d["parameters"] == {"added": [], "removed": ["method"], "changed": [], "details": {}}
    assert d["fields"] == {}
    b.manifest.description = "smaller"
    assert tpl.diff(a, b)["fields"] == {"description": {"from": "", "to": "smaller"}}
    assert d["nodes"]["removed"] == ["param method"] and "Output" in d["nodes"]["changed"]
    assert d["nodes"]["details"]["Output"] == {"filename_prefix": {"from": GRAPH["5"]["inputs"]["filename_prefix"],
                                                                   "to": "y"}}
    b.deprecated = True
    assert tpl.pick([a, b], "scale").version == 1 and tpl.pick([a, b], "scale", 2).version == 2
    a.deprecated = True
    with pytest.raises(NotFound, match="every version of template 'scale' is deprecated"):
        tpl.pick([a, b], "scale")


def test_parameter_nodes_added_to_an_opened_version_join_its_manifest() -> None:
    from orchestrator.core.graph import NodeProblem, node_errors
    from orchestrator.core.templates import merge_manifest

    origin = {"title": "T", "kind": "image", "outputs": [{"node": "Save", "name": "out"}], "parameters": [
        {"name": "image", "type": "image", "bind": {"node": "Load", "input": "image"}},
        {"name": "scale", "type": "float", "default": 2.0, "bind": {"node": "Scale", "input": "scale_by"}},
        {"name": "method", "type": "choice", "default": "nearest-exact", "choices": ["nearest-exact", "bicubic"],
         "bind": {"node": "Scale", "input": "upscale_method"}},
        {"name": "gone", "type": "int", "default": 1, "bind": {"node": "Deleted", "input": "x"}}]}
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Load"}},
             "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "scale_by": ["5", 0],
                                                            "upscale_method": "bicubic"}, "_meta": {"title": "Scale"}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}, "_meta": {"title": "Save"}},
             "5": {"class_type": "MediaLabParamFloat", "inputs": {"name": "zoom", "value": 0.5},
                   "_meta": {"title": "param zoom"}}}
    derived = {"parameters": [{"name": "zoom", "type": "float", "default": 0.5,
                               "bind": {"node": "param zoom", "input": "value"}}],
               "outputs": [{"node": "Save", "name": "output"}]}
    merged = merge_manifest(origin, derived, graph)
    assert [p["name"] for p in merged["parameters"]] == ["image", "method", "zoom"]  # scale: a link now; gone: gone
    assert merged["parameters"][1]["default"] == "bicubic"  # the value left in the graph
    origin["parameters"].append({"name": "zoom", "type": "float", "default": 1.0, "help": "How much.",
                                 "bind": {"node": "Scale", "input": "scale_by"}})
    assert merge_manifest(origin, derived, graph)["parameters"][-1]["help"] == "How much."  # kept for the node
    origin["parameters"].pop()
    assert merged["outputs"] == [{"node": "Save", "name": "out"}] and merged["title"] == "T"
    del graph["3"]["_meta"]
    assert merge_manifest(origin, derived, graph)["outputs"] == derived["outputs"]  # its output node is gone

    problem = NodeProblem("node 'Scale' (#2 ImageScaleBy)", 2).extend("bad")
    assert problem == "node 'Scale' (#2 ImageScaleBy): bad" and (problem.node, problem.input) == ("2", None)
    assert node_errors([problem, "a problem of no node", NodeProblem("x", "7", "image")]) == [
        {"node": "2", "input": None, "message": "node 'Scale' (#2 ImageScaleBy): bad"},
        {"node": "7", "input": "image", "message": "x"}]
