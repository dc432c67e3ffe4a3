import json
from pathlib import Path

import pytest

from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, NotFound
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT

LIBRARY = PROJECT_ROOT / "comfy_workflows"


@pytest.fixture
def esrgan() -> tpl.TemplateVersion:
    return tpl.pick(library.scan_library(LIBRARY), "upscale-esrgan", 1)


def write(folder: Path, manifest: dict, graph: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "graph.json").write_text(json.dumps(graph))
    return folder


GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "In"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}, "_meta": {"title": "Out"}}}
MANIFEST = {"title": "t", "kind": "image", "outputs": [{"node": "Out", "name": "o"}],
            "parameters": [{"name": "image", "type": "image", "bind": {"node": "In", "input": "image"}}]}


def test_bind_by_title_not_id(esrgan: tpl.TemplateVersion) -> None:
    graph = tpl.bind(esrgan, {"image": "abc.png", "model": "m.pth"})
    assert graph["1"]["inputs"]["image"] == "abc.png"
    assert graph["2"]["inputs"]["model_name"] == "m.pth"
    assert esrgan.graph["1"]["inputs"]["image"] == "frame.png"  # the template itself is untouched
    # renumbered nodes (an artist re-saved the graph) bind the same way
    renumbered = {str(int(k) + 10): v for k, v in esrgan.graph.items()}
    moved = esrgan.model_copy(update={"graph": renumbered})
    assert tpl.bind(moved, {"image": "x.png"})["11"]["inputs"]["image"] == "x.png"


def test_validate_params_fills_defaults_and_names_bad_fields(esrgan: tpl.TemplateVersion) -> None:
    assert tpl.validate_params(esrgan, {"image": "id1"}) == {"image": "id1", "model": "RealESRGAN_x4plus.pth"}
    with pytest.raises(InvalidInput) as exc:
        tpl.validate_params(esrgan, {"model": 3, "extra": True})
    msg = exc.value.message
    assert "image: Field required" in msg and "model:" in msg
    assert "unknown parameter 'extra'; valid: image, model" in msg


def test_an_unknown_parameter_names_the_closest_and_the_valid_ones(esrgan: tpl.TemplateVersion) -> None:
    with pytest.raises(InvalidInput) as exc:
        tpl.validate_params(esrgan, {"image": "i", "modle": "m.pth"})
    hint = "unknown parameter 'modle'; did you mean 'model'? valid: image, model"
    assert exc.value.message == f"bad parameters for upscale-esrgan@v1: {hint}"
    assert exc.value.extra["errors"] == [{"param": "modle", "message": hint}]
    assert "Extra inputs" not in exc.value.message
    with pytest.raises(InvalidInput, match=r"unknown parameter 'zzz'; valid: image, model$"):
        tpl.validate_params(esrgan, {"image": "i", "zzz": 1})  # nothing close: only the valid names


def test_an_unknown_template_suggests_close_names(tmp_path: Path) -> None:
    write(tmp_path / "upscale" / "v1", MANIFEST, GRAPH)
    write(tmp_path / "restyle" / "v1", MANIFEST, GRAPH)
    versions = library.scan_library(tmp_path)
    with pytest.raises(NotFound, match=r"^unknown template 'upscal'; did you mean 'upscale'\? "
                                       r"\(known: restyle, upscale\)$"):
        tpl.pick(versions, "upscal")
    with pytest.raises(NotFound, match=r"^unknown template 'qqq' \(known: restyle, upscale\)$"):
        tpl.pick(versions, "qqq")


def test_numeric_ranges_and_choices(tmp_path: Path) -> None:
    manifest = dict(MANIFEST, parameters=MANIFEST["parameters"] + [
        {"name": "steps", "type": "int", "default": 4, "min": 1, "max": 50, "bind": {"node": "In", "input": "s"}},
        {"name": "mode", "type": "choice", "default": "a", "choices": ["a", "b"], "bind": {"node": "In", "input": "m"}},
    ])
    t = library.load_version(write(tmp_path / "v1", manifest, GRAPH), "t", 1)
    assert tpl.validate_params(t, {"image": "i", "steps": 50, "mode": "b"})["steps"] == 50
    for bad in ({"steps": 51}, {"steps": 0}, {"steps": 2.5}, {"steps": "3"}, {"mode": "c"}):
        with pytest.raises(InvalidInput):
            tpl.validate_params(t, {"image": "i", **bad})
    schema = t.params_schema()
    assert schema["properties"]["steps"]["maximum"] == 50
    assert schema["properties"]["mode"]["enum"] == ["a", "b"]


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    bad_bind = dict(MANIFEST, parameters=[{"name": "image", "type": "image", "bind": {"node": "Nope", "input": "x"}}])
    with pytest.raises(InvalidInput, match="binds to node title 'Nope'"):
        library.load_version(write(tmp_path / "a", bad_bind, GRAPH), "a", 1)
    with pytest.raises(InvalidInput, match="output o names node title 'Gone'"):
        library.load_version(write(tmp_path / "b", dict(MANIFEST, outputs=[{"node": "Gone", "name": "o"}]), GRAPH),
                             "b", 1)
    with pytest.raises(InvalidInput, match="type choice needs choices"):
        choice = dict(MANIFEST, parameters=[{"name": "c", "type": "choice", "bind": {"node": "In", "input": "x"}}])
        library.load_version(write(tmp_path / "c", choice, GRAPH), "c", 1)
    with pytest.raises(InvalidInput, match="editor format; export the workflow in API format"):
        library.load_version(write(tmp_path / "d", MANIFEST, {"nodes": [], "links": []}), "d", 1)
    with pytest.raises(InvalidInput, match="not an API-format graph"):
        library.load_version(write(tmp_path / "f", MANIFEST, {"1": {"inputs": {}}}), "f", 1)
    dup = {**GRAPH, "3": {"class_type": "LoadImage", "inputs": {}, "_meta": {"title": "In"}}}
    with pytest.raises(InvalidInput, match="missing or not unique"):
        library.load_version(write(tmp_path / "e", MANIFEST, dup), "e", 1)


def test_content_hash_is_stable_and_sensitive(esrgan: tpl.TemplateVersion, tmp_path: Path) -> None:
    again = tpl.pick(library.scan_library(LIBRARY), "upscale-esrgan", 1)
    assert again.content_hash == esrgan.content_hash
    a = library.load_version(write(tmp_path / "v1", MANIFEST, GRAPH), "t", 1)
    b = library.load_version(write(tmp_path / "v2", dict(MANIFEST, title="t2"), GRAPH), "t", 2)
    assert a.content_hash != b.content_hash


def test_pick_versions(tmp_path: Path) -> None:
    write(tmp_path / "t" / "v1", MANIFEST, GRAPH)
    write(tmp_path / "t" / "v2", dict(MANIFEST, title="second"), GRAPH)
    versions = library.scan_library(tmp_path)
    assert tpl.pick(versions, "t").version == 2
    assert tpl.pick(versions, "t", 1).manifest.title == "t"
    with pytest.raises(NotFound, match="no version 3"):
        tpl.pick(versions, "t", 3)
    with pytest.raises(NotFound, match="unknown template 'x'"):
        tpl.pick(versions, "x")


def test_model_refs(esrgan: tpl.TemplateVersion) -> None:
    graph = tpl.bind(esrgan, {"model": "tiny.safetensors"})
    assert tpl.model_refs(graph) == {("upscale_models", "tiny.safetensors")}


def test_optional_branch_is_bypassed_and_pruned_when_left_out() -> None:
    t = tpl.pick(library.scan_library(LIBRARY), "generate-lora", 1)
    values = tpl.validate_params(t, {"lora": "c.safetensors"})
    assert values["reference"] is None and "reference" not in t.params_schema().get("required", [])
    core = tpl.bind(t, values)
    classes = {n["class_type"] for n in core.values()}
    assert not classes & {"LoadImage", "IPAdapterUnifiedLoader", "IPAdapterAdvanced"}
    sampler = next(n for n in core.values() if n["class_type"] == "KSampler")
    lora_id = next(k for k, n in core.items() if n["class_type"] == "LoraLoader")
    assert sampler["inputs"]["model"] == [lora_id, 0]
    assert not {("ipadapter", "x")} & tpl.model_refs(core)
    full = tpl.bind(t, {**values, "reference": "ref.png"})
    assert {"LoadImage", "IPAdapterAdvanced"} <= {n["class_type"] for n in full.values()}
    assert tpl.bind(t, {}) == t.graph  # nothing given, nothing bypassed (a re-attach binds nothing)


def test_optional_input_dropped_from_its_consumer() -> None:
    t = tpl.pick(library.scan_library(LIBRARY), "blend-faceid", 1)
    values = tpl.validate_params(t, {"face": "f", "inspiration_1": "a", "inspiration_3": "c"})
    graph = tpl.bind(t, values)
    blend = next(n for n in graph.values() if n["class_type"] == "IPAdapterCombineEmbeds")
    assert set(blend["inputs"]) == {"embed1", "embed3", "method"}
    assert sum(n["class_type"] == "LoadImage" for n in graph.values()) == 3  # face + inspirations 1 and 3


def test_bypass_errors_name_the_problem(tmp_path: Path) -> None:
    bad = dict(MANIFEST, parameters=[dict(MANIFEST["parameters"][0], optional=True, bypass={"Nope": "x"})])
    with pytest.raises(InvalidInput, match="bypasses node title 'Nope'"):
        library.load_version(write(tmp_path / "v1", bad, GRAPH), "t", 1)
    literal = dict(MANIFEST, parameters=[dict(MANIFEST["parameters"][0], optional=True, bypass={"In": "image"})])
    with pytest.raises(InvalidInput, match="not a link"):
        library.load_version(write(tmp_path / "v2", literal, GRAPH), "t", 1)
    required = dict(MANIFEST, parameters=[dict(MANIFEST["parameters"][0], bypass={"Out": None})])
    with pytest.raises(InvalidInput, match="only for optional"):
        library.load_version(write(tmp_path / "v3", required, GRAPH), "t", 1)
