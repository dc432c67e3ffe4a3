"""The pure rules of batches (``core/batches.py``): expanding a request into items, the item limit, progress
and ETA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.core import batches as rules
from orchestrator.core.errors import InvalidInput
from orchestrator.core.states import JobState

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_grid_is_the_cartesian_product_for_each_input_in_a_stable_order() -> None:
    g = rules.Grid(template="restyle", inputs=["a1", "a2"], input_param="image",
                   grid={"strength": [0.3, 0.6], "style": ["x", "y", "z"]}, params={"seed": 7})
    items = rules.expand(g, 100)
    assert rules.grid_size(g) == len(items) == 12
    assert [i.index for i in items] == list(range(12))
    assert items[0].params == {"seed": 7, "strength": 0.3, "style": "x", "image": "a1"}
    assert items[1].params == {"seed": 7, "strength": 0.3, "style": "y", "image": "a1"}  # the last name fastest
    assert items[3].params["strength"] == 0.6
    assert items[6].params == {"seed": 7, "strength": 0.3, "style": "x", "image": "a2"}
    assert rules.expand(g, 100) == items  # stable
    assert all(i.template == "restyle" and i.version is None for i in items)


def test_a_grid_without_inputs_and_inputs_without_a_grid() -> None:
    only_grid = rules.expand(rules.Grid(template="t", grid={"n": [1, 2, 3]}), 10)
    assert [i.params for i in only_grid] == [{"n": 1}, {"n": 2}, {"n": 3}]
    only_inputs = rules.expand(rules.Grid(template="t", version=2, inputs=["a", "b"], input_param="image",
                                          params={"model": "m"}), 10)
    assert [i.params for i in only_inputs] == [{"model": "m", "image": "a"}, {"model": "m", "image": "b"}]
    assert {i.version for i in only_inputs} == {2}
    assert len(rules.expand(rules.Grid(template="t", params={"a": 1}), 10)) == 1


def test_over_the_item_limit_is_refused_naming_the_setting_before_expanding() -> None:
    g = rules.Grid(template="t", grid={"a": list(range(1000)), "b": list(range(1000))})  # a million
    with pytest.raises(InvalidInput) as exc:
        rules.expand(g, 10_000)
    assert "max_batch_items=10000" in exc.value.message and "1000000 items" in exc.value.message
    assert exc.value.extra["limit"] == "max_batch_items" and exc.value.extra["value"] == 10_000
    with pytest.raises(InvalidInput, match="max_batch_items=2"):
        rules.explicit([{"template": "t"}] * 3, 2)


@pytest.mark.parametrize(("grid", "message"), [
    (rules.Grid(template="t", inputs=["a"]), "input_param"),
    (rules.Grid(template="t", input_param="image"), "without inputs"),
    (rules.Grid(template="t", grid={"a": []}), "non-empty list"),
    (rules.Grid(template="t", grid={"a": [1]}, params={"a": 2}), "more than once"),
    (rules.Grid(template="t", inputs=["x"], input_param="image", params={"image": "y"}), "more than once"),
])
def test_bad_grid_shapes(grid: rules.Grid, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        rules.expand(grid, 10)


def test_explicit_items_keep_their_order() -> None:
    items = rules.explicit([{"template": "a", "params": {"x": 1}}, {"template": "b", "version": 3}], 10)
    assert [(i.index, i.template, i.params, i.version) for i in items] == [(0, "a", {"x": 1}, None),
                                                                           (1, "b", {}, 3)]
    with pytest.raises(InvalidInput, match="at least one item"):
        rules.explicit([], 10)


def test_progress_and_eta_from_counts_and_finish_times() -> None:
    counts = {JobState.SUCCEEDED: 8, JobState.FAILED: 2, JobState.RUNNING: 2, JobState.QUEUED: 8}
    finished = [T0 + timedelta(seconds=10 + 2 * i) for i in range(10)]  # one every 2 s, the last at T0+28 s
    p = rules.progress(counts, reversed(finished), T0, T0 + timedelta(seconds=28))
    assert (p.total, p.done, p.fraction, p.finished) == (20, 10, 0.5, False)
    assert p.counts == {"FAILED": 2, "QUEUED": 8, "RUNNING": 2, "SUCCEEDED": 8}
    assert p.eta_s == pytest.approx(20.0)  # 10 left at 0.5 per second
    later = rules.progress(counts, finished, T0, T0 + timedelta(seconds=33))
    assert later.eta_s == pytest.approx(15.0)  # counted from the last finish
    assert rules.progress(counts, finished, T0, T0 + timedelta(seconds=100)).eta_s == 0.0


def test_progress_before_any_finish_after_one_and_when_all_are_done() -> None:
    assert rules.progress({JobState.QUEUED: 3}, [], T0, T0 + timedelta(seconds=5)).eta_s is None
    one = rules.progress({JobState.SUCCEEDED: 1, JobState.QUEUED: 3}, [T0 + timedelta(seconds=10)], T0,
                         T0 + timedelta(seconds=10))
    assert one.eta_s == pytest.approx(30.0)  # one per 10 s since the batch was made
    done = rules.progress({JobState.SUCCEEDED: 2, JobState.CANCELLED: 1}, [T0, T0], T0, T0)
    assert done.finished and done.fraction == 1.0 and done.eta_s is None
    empty = rules.progress({}, [], T0, T0)
    assert empty.total == 0 and empty.finished
