"""The pure rules of a batch of pipeline runs: the input it binds to, its items, its progress in runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.core import batches as rules
from orchestrator.core.errors import InvalidInput
from orchestrator.core.pipeline_runs import RunState
from orchestrator.core.states import JobState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_input_is_named_or_the_only_media_one() -> None:
    assert rules.artifact_input({"frame": "image", "strength": "float"}, None) == "frame"
    assert rules.artifact_input({"a": "image", "b": "video"}, "b") == "b"
    with pytest.raises(InvalidInput, match="2 image/video inputs"):
        rules.artifact_input({"a": "image", "b": "video"}, None)
    with pytest.raises(InvalidInput, match="no input 'c'"):
        rules.artifact_input({"a": "image"}, "c")


def test_a_run_per_input_in_order_with_the_fixed_overrides() -> None:
    g = rules.PipelineGrid("twice", inputs=["x", "y"], params={"second": {"resize": 0.5}})
    items = rules.expand_runs(g, "frame", 10)
    assert [(i.index, i.inputs, i.params) for i in items] == [
        (0, {"frame": "x"}, {"second": {"resize": 0.5}}), (1, {"frame": "y"}, {"second": {"resize": 0.5}})]
    with pytest.raises(InvalidInput):
        rules.expand_runs(rules.PipelineGrid("twice"), "frame", 10)
    with pytest.raises(InvalidInput, match="max_batch_items"):
        rules.expand_runs(g, "frame", 1)


def test_progress_counts_runs_so_a_run_between_steps_is_not_finished() -> None:
    """Every job so far SUCCEEDED (step 2 of run 1 still WAITING, no job): the job count says finished, the
    run count does not."""
    assert rules.progress({JobState.SUCCEEDED: 2}, [T0, T0], T0, T0).finished
    p = rules.run_progress({RunState.SUCCEEDED: 1, RunState.RUNNING: 1}, [T0 + timedelta(seconds=4)], T0,
                           T0 + timedelta(seconds=5))
    assert (p.total, p.done, p.fraction, p.finished) == (2, 1, 0.5, False)
    assert p.counts == {"RUNNING": 1, "SUCCEEDED": 1} and p.eta_s is not None
    done = rules.run_progress({RunState.SUCCEEDED: 1, RunState.CANCELLED: 1}, [T0, T0], T0, T0)
    assert done.finished and done.eta_s is None
