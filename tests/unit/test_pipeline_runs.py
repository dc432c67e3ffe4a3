"""The advance rule of a pipeline run (``core.pipeline_runs``), pure."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core import pipeline_runs as pr
from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput
from orchestrator.core.pipeline_runs import RunState, StepState

W, Q, S, R, F, C = (StepState.WAITING, StepState.QUEUED, StepState.SUCCEEDED, StepState.REUSED, StepState.FAILED,
                    StepState.CANCELLED)


def checked(steps: list[dict[str, Any]], order: list[str], outputs: list[dict[str, str]]) -> pl.CheckedPipeline:
    p = pl.parse({"name": "t", "version": 1, "inputs": [{"name": "frame", "type": "image"}], "steps": steps,
                  "outputs": outputs})
    return pl.CheckedPipeline(pipeline=p, content_hash="h", order=order,
                              templates={s["id"]: pl.TemplatePin(template="x", version=1, content_hash="t")
                                         for s in steps})


def step(sid: str, image: Any, **more: Any) -> dict[str, Any]:
    return {"id": sid, "template": "upscale-esrgan", "version": 2, "params": {"image": image, **more}}


# a -> b, a -> c (b and c independent), output from b and c
DIAMOND = checked([step("a", {"input": "frame"}), step("b", {"step": "a", "output": "upscaled"}),
                   step("c", {"step": "a", "output": "upscaled"}, resize=0.5)],
                  ["a", "b", "c"], [{"name": "big", "step": "b", "output": "upscaled"},
                                    {"name": "small", "step": "c", "output": "upscaled"}])


def states(**kw: StepState) -> dict[str, StepState]:
    return {"a": W, "b": W, "c": W} | kw


def test_a_new_run_submits_the_steps_with_no_upstream() -> None:
    p = pr.plan(DIAMOND, states(), {})
    assert (p.submit, p.cancel, p.state) == (["a"], [], RunState.RUNNING)


def test_nothing_new_while_the_first_step_runs_then_both_children_in_order() -> None:
    assert pr.plan(DIAMOND, states(a=Q), {}).submit == []
    p = pr.plan(DIAMOND, states(a=S), {"a": {"upscaled": "art1"}})
    assert p.submit == ["b", "c"] and p.state == RunState.RUNNING
    assert pr.plan(DIAMOND, states(a=R, b=Q), {}).submit == ["c"]  # a reused step counts as done


def test_every_step_done_succeeds_with_the_pipelines_outputs() -> None:
    p = pr.plan(DIAMOND, states(a=S, b=R, c=S), {"a": {"upscaled": "1"}, "b": {"upscaled": "2"},
                                                  "c": {"upscaled": "3"}})
    assert (p.state, p.outputs, p.submit) == (RunState.SUCCEEDED, {"big": "2", "small": "3"}, [])


def test_a_failed_step_starts_nothing_and_the_run_fails_once_nothing_is_active() -> None:
    p = pr.plan(DIAMOND, states(a=S, b=F, c=Q), {})
    assert (p.submit, p.state) == ([], RunState.RUNNING)  # c still runs: the run waits for it
    p = pr.plan(DIAMOND, states(a=S, b=F, c=S), {})
    assert (p.state, p.error) == (RunState.FAILED, {"step": "b"})
    p = pr.plan(DIAMOND, states(a=F), {})
    assert (p.state, p.submit, p.error) == (RunState.FAILED, [], {"step": "a"})  # b and c stay WAITING


def test_cancel_cancels_the_waiting_steps_and_ends_when_nothing_is_active() -> None:
    p = pr.plan(DIAMOND, states(a=Q), {}, cancel_requested=True)
    assert (p.submit, p.cancel, p.state) == ([], ["b", "c"], RunState.RUNNING)
    p = pr.plan(DIAMOND, states(a=S, b=C, c=C), {}, cancel_requested=True)
    assert (p.cancel, p.state) == ([], RunState.CANCELLED)
    assert pr.plan(DIAMOND, states(a=C), {}).state == RunState.CANCELLED  # its job cancelled on its own


def test_resumed_rows_plan_from_the_failed_step() -> None:
    """Resume puts the failed step back to WAITING: the plan submits it and not the succeeded upstream."""
    p = pr.plan(DIAMOND, states(a=S, b=W, c=S), {"a": {"upscaled": "1"}})
    assert (p.submit, p.state) == (["b"], RunState.RUNNING)


def test_the_plan_needs_every_steps_state() -> None:
    with pytest.raises(ValueError, match="no state"):
        pr.plan(DIAMOND, {"a": W}, {})


def test_resolve_takes_upstream_outputs_and_constant_overrides_only() -> None:
    assert pr.resolve(DIAMOND, "c", {"frame": "in"}, {"a": {"upscaled": "art1"}}, {"c": {"resize": 0.25}}) == {
        "image": "art1", "resize": 0.25}
    assert pr.check_overrides(DIAMOND, {"c": {"resize": 0.25}}) == []
    errors = pr.check_overrides(DIAMOND, {"zz": {"resize": 1}, "b": {"image": "x"}})
    assert [e["param"] for e in errors] == ["params.zz", "params.b.image"]


def test_inputs_are_checked_each_named() -> None:
    errors = pr.check_inputs(DIAMOND, {"extra": 1}, {})
    assert {e["param"] for e in errors} == {"inputs.extra", "inputs.frame"}
    assert pr.check_inputs(DIAMOND, {"frame": "a1"}, {"a1": "image/png"}) == []
    assert pr.check_inputs(DIAMOND, {"frame": "a1"}, {"a1": "video/mp4"})[0]["message"] == (
        "artifact is video/mp4, not an image")
    assert "unknown artifact" in pr.check_inputs(DIAMOND, {"frame": "zz"}, {"zz": None})[0]["message"]
    with pytest.raises(InvalidInput) as e:
        pr.refuse(errors)
    assert e.value.extra["errors"] == errors


def test_reuse_key_is_content_not_ids() -> None:
    a = pr.reuse_key("t1", {"image": "artA", "resize": 0.25}, {"image": "sha"})
    assert a == pr.reuse_key("t1", {"resize": 0.25, "image": "artB"}, {"image": "sha"})  # other id, same bytes
    assert a != pr.reuse_key("t1", {"image": "artA", "resize": 0.5}, {"image": "sha"})
    assert a != pr.reuse_key("t2", {"image": "artA", "resize": 0.25}, {"image": "sha"})
    assert a != pr.reuse_key("t1", {"image": "artA", "resize": 0.25}, {"image": "other"})
