"""Pipeline definitions (core.pipelines) against the real template library: every problem named by its path,
the topological order, the content hash; the shipped pipelines check; the library folder read."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput
from orchestrator.runtime import library, pipeline_library
from orchestrator.settings import PROJECT_ROOT

LIBRARY = library.scan_library(PROJECT_ROOT / "comfy_workflows")
SHIPPED = pipeline_library.scan_pipelines(PROJECT_ROOT / "comfy_pipelines")

CHAIN: dict[str, Any] = {
    "name": "chain", "version": 1,
    "inputs": [{"name": "frame", "type": "image"}],
    "steps": [
        {"id": "restyle", "template": "restyle-ipadapter", "version": 1, "params": {"image": {"input": "frame"}}},
        {"id": "upscale", "template": "upscale-esrgan", "version": 2,
         "params": {"image": {"step": "restyle", "output": "image"}, "resize": 0.5}},
    ],
    "outputs": [{"name": "upscaled", "step": "upscale", "output": "upscaled"}],
}


def edited(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(CHAIN)
    d.update(changes)
    return d


def problems(raw: dict[str, Any]) -> dict[str, str]:
    """param path -> message of every problem the check names."""
    with pytest.raises(InvalidInput) as exc:
        pl.check(pl.parse(raw), LIBRARY)
    return {e["param"]: e["message"] for e in exc.value.extra["errors"]}


def test_a_chain_checks_in_order_with_its_templates_pinned() -> None:
    c = pl.check(pl.parse(CHAIN), LIBRARY)
    assert c.order == ["restyle", "upscale"]
    esrgan = next(t for t in LIBRARY if t.ref == "upscale-esrgan@v2")
    assert c.templates["upscale"].content_hash == esrgan.content_hash and c.templates["upscale"].version == 2


def test_the_order_follows_the_data_not_the_file() -> None:
    raw = edited(steps=list(reversed(CHAIN["steps"])))
    assert pl.check(pl.parse(raw), LIBRARY).order == ["restyle", "upscale"]
    assert pl.topological_order(["d", "c", "b", "a"], {"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []}) == \
        (["a", "c", "b", "d"], None)  # file order among those free to go


def test_a_cycle_is_named() -> None:
    steps = copy.deepcopy(CHAIN["steps"])
    steps[0]["params"]["image"] = {"step": "upscale", "output": "upscaled"}
    found = problems(edited(steps=steps, inputs=[]))
    assert found == {"steps[1].params.image": "cycle: restyle -> upscale -> restyle"}, found
    assert pl.topological_order(["a", "b", "c"], {"a": ["c"], "b": ["a"], "c": ["b"]}) == ([], ["a", "c", "b", "a"])


def test_a_step_taking_its_own_output_is_a_cycle() -> None:
    steps = copy.deepcopy(CHAIN["steps"])
    steps[1]["params"]["image"] = {"step": "upscale", "output": "upscaled"}
    found = problems(edited(steps=steps))
    assert found["steps[1].params.image"].startswith("cycle: upscale -> upscale"), found


def test_a_type_mismatch_is_named() -> None:
    video = edited(inputs=[{"name": "frame", "type": "video"}])
    assert problems(video) == {"steps[0].params.image": "type mismatch: input 'frame' is video, "
                                                        "restyle-ipadapter@v1 parameter 'image' is image"}
    steps = copy.deepcopy(CHAIN["steps"])  # a step's image output into a video parameter
    steps[1] = {"id": "upscale", "template": "upscale-esrgan-video", "version": 1,
                "params": {"video": {"step": "restyle", "output": "image"}}}
    found = problems(edited(steps=steps, outputs=[{"name": "v", "step": "upscale", "output": "video"}]))
    assert found == {"steps[1].params.video": "type mismatch: step 'restyle' output 'image' is image, "
                                              "upscale-esrgan-video@v1 parameter 'video' is video"}, found
    steps = copy.deepcopy(CHAIN["steps"])  # a constant of the wrong type
    steps[1]["params"]["resize"] = "big"
    assert list(problems(edited(steps=steps))) == ["steps[1].params.resize"]


def test_dangling_references_are_named() -> None:
    steps = copy.deepcopy(CHAIN["steps"])
    steps[0]["params"]["image"] = {"input": "picture"}
    steps[1]["params"]["image"] = {"step": "restyle", "output": "upscaled"}
    found = problems(edited(steps=steps, outputs=[{"name": "x", "step": "nope", "output": "image"}]))
    assert found["steps[0].params.image"] == "no pipeline input 'picture' (inputs: frame)"
    assert found["steps[1].params.image"] == ("step 'restyle' (restyle-ipadapter@v1) has no output 'upscaled' "
                                              "(outputs: image)")
    assert found["outputs[0].step"] == "no step 'nope' (steps: restyle, upscale)"
    assert found["inputs[0].name"] == "input 'frame' is bound by no step"
    steps[1]["params"]["image"] = {"step": "later", "output": "image"}
    assert problems(edited(steps=steps))["steps[1].params.image"] == "no step 'later' (steps: restyle, upscale)"


def test_a_missing_required_param_is_named() -> None:
    steps = copy.deepcopy(CHAIN["steps"])
    del steps[1]["params"]["image"]
    found = problems(edited(steps=steps))
    assert found == {"steps[1].params.image": "upscale-esrgan@v2 parameter 'image' (image) is required: bind it "
                                              "to a constant, an input or a step"}, found


def test_unknown_templates_versions_params_and_twice_used_ids() -> None:
    steps = copy.deepcopy(CHAIN["steps"])
    steps[0]["template"] = "restyle-ipadaptr"
    steps[1]["version"] = 9
    steps.append({**copy.deepcopy(CHAIN["steps"][1]), "id": "restyle"})
    steps[2]["params"]["scale"] = 2
    found = problems(edited(steps=steps))
    assert "did you mean 'restyle-ipadapter'" in found["steps[0].template"]
    assert found["steps[1].version"].startswith("template 'upscale-esrgan' has no version 9")
    assert found["steps[2].id"] == "step id 'restyle' is used by steps[0] too"
    assert found["steps[2].params.scale"].startswith("upscale-esrgan@v2: unknown parameter 'scale'")


def test_the_structure_is_checked_with_paths() -> None:
    with pytest.raises(InvalidInput) as exc:
        pl.parse(edited(steps=[{"id": "Bad Id", "template": "x", "version": 0}], outputs=[]))
    paths = {e["param"] for e in exc.value.extra["errors"]}
    assert {"steps[0].id", "steps[0].version", "outputs"} <= paths, paths
    steps = copy.deepcopy(CHAIN["steps"])
    steps[1]["params"]["image"] = {"step": "restyle"}  # half a reference is no constant
    assert "a reference is" in problems(edited(steps=steps))["steps[1].params.image"]


def test_the_hash_ignores_order_spacing_defaults_name_and_version() -> None:
    base = pl.content_hash(pl.parse(CHAIN))
    shuffled = json.loads(json.dumps({k: CHAIN[k] for k in reversed(list(CHAIN))}, indent=3))
    assert pl.content_hash(pl.parse(shuffled)) == base
    assert pl.content_hash(pl.parse(edited(description=""))) == base  # the default, written out
    assert pl.content_hash(pl.parse(edited(name="other", version=7))) == base
    steps = copy.deepcopy(CHAIN["steps"])
    steps[1]["params"]["resize"] = 0.25
    assert pl.content_hash(pl.parse(edited(steps=steps))) != base
    assert base == pl.content_hash(pl.parse(CHAIN))  # stable across calls
    assert base == "382280af63d1f5222cb30e9deb2209060b36faf00e84b78b67aa7a2390426e1d"  # pinned: across processes


def test_the_shipped_pipelines_check_against_the_real_library() -> None:
    assert {p.name for p in SHIPPED} == {"restyle-upscale", "interpolate-upscale-video", "blend-generate-lora"}
    for p in SHIPPED:
        c = pl.check(p, LIBRARY)
        first, second = c.order
        by_id = {s.id: s for s in p.steps}
        assert pl.upstream(by_id[first]) == [] and pl.upstream(by_id[second]) == [first], p.ref


def test_a_run_resolves_step_by_step() -> None:
    c = pl.check(pl.parse(CHAIN), LIBRARY)
    assert pl.ready_steps(c, finished=set(), started=set()) == ["restyle"]
    assert pl.ready_steps(c, finished=set(), started={"restyle"}) == []
    assert pl.ready_steps(c, finished={"restyle"}, started={"restyle"}) == ["upscale"]
    restyle, upscale = c.pipeline.steps
    assert pl.resolve_params(restyle, {"frame": "a1"}, {}) == {"image": "a1"}
    with pytest.raises(InvalidInput, match="has not stored its output"):
        pl.resolve_params(upscale, {"frame": "a1"}, {})
    assert pl.resolve_params(upscale, {}, {"restyle": {"image": "a2"}}) == {"image": "a2", "resize": 0.5}


def test_the_library_folder_must_agree_with_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "chain" / "v2"
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps(CHAIN))  # says version 1
    with pytest.raises(InvalidInput, match="the file says version 1, the folder 2"):
        pipeline_library.scan_pipelines(tmp_path)
    (folder / "pipeline.json").write_text(json.dumps({k: v for k, v in CHAIN.items() if k not in ("name", "version")}))
    [p] = pipeline_library.scan_pipelines(tmp_path)
    assert p.ref == "chain@v2"
    assert pipeline_library.scan_pipelines(tmp_path / "none") == []
