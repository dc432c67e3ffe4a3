from orchestrator.core.validation import types_match, validate_graph

INFO = {
    "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}, "output": ["IMAGE", "MASK"]},
    "ImageScaleBy": {"input": {"required": {"image": ["IMAGE"], "upscale_method": [["nearest-exact", "bilinear"]],
                                            "scale_by": ["FLOAT", {"min": 0.01, "max": 8.0}]}}, "output": ["IMAGE"]},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}, "output": []},
    "UpscaleModelLoader": {"input": {"required": {"model_name": ["COMBO", {"options": ["x.pth"]}]}},
                           "output": ["UPSCALE_MODEL"]},
    "Choice": {"input": {"required": {"name": ["STRING"]}}, "output": ["*"]},
}


def graph(**overrides: dict) -> dict:
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": "not-on-that-machine.png"}},
         "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                         "scale_by": 2.0}, "_meta": {"title": "Scale"}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    for nid, inputs in overrides.items():
        g[nid.removeprefix("n")]["inputs"].update(inputs)
    return g


def test_a_good_graph_passes_and_file_lists_are_not_checked() -> None:
    assert validate_graph(graph(), INFO) == []
    assert validate_graph({"1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "y.pth"}}}, INFO) == []


def test_each_problem_names_node_and_input() -> None:
    bad = graph(n2={"scale_by": 9.0, "upscale_method": "cubic", "extra": 1}, n3={"images": ["1", 1]})
    del bad["3"]["inputs"]["filename_prefix"]
    bad["4"] = {"class_type": "NoSuchNode", "inputs": {}}
    problems = validate_graph(bad, INFO)
    assert "node 'Scale' (#2 ImageScaleBy) input 'scale_by': 9.0 is above the maximum 8.0" in problems
    assert "node 'Scale' (#2 ImageScaleBy) input 'upscale_method': 'cubic' is not one of " \
           "['nearest-exact', 'bilinear']" in problems
    assert "node 'Scale' (#2 ImageScaleBy): unknown input 'extra'" in problems
    assert "node '3' (#3 SaveImage) input 'images': expects IMAGE, node #1 gives MASK" in problems
    assert "node '3' (#3 SaveImage): required input 'filename_prefix' is missing" in problems
    assert "node '4' (#4 NoSuchNode): unknown node class (is its node pack installed?)" in problems
    assert len(problems) == 6


def test_literal_types_and_links() -> None:
    assert validate_graph(graph(n2={"scale_by": "2"}), INFO) == [
        "node 'Scale' (#2 ImageScaleBy) input 'scale_by': '2' is not a number"]
    assert validate_graph(graph(n2={"image": "a.png"}), INFO) == [
        "node 'Scale' (#2 ImageScaleBy) input 'image': needs a link from a node giving IMAGE, not a value"]
    assert validate_graph(graph(n2={"image": ["9", 0]}), INFO) == [
        "node 'Scale' (#2 ImageScaleBy) input 'image': links to node #9, which is not in the graph"]
    wild = graph(n2={"upscale_method": ["5", 0]})
    wild["5"] = {"class_type": "Choice", "inputs": {"name": "m"}}
    assert validate_graph(wild, INFO) == []  # a wildcard output feeds a COMBO input


def test_types_match() -> None:
    assert types_match("IMAGE", "IMAGE") and types_match("INT,FLOAT", "FLOAT") and types_match("*", "MODEL")
    assert not types_match("INT", "FLOAT") and not types_match("IMAGE", ["a", "b"])
    assert types_match("COMBO", ["a"]) and types_match(["a"], "COMBO")
