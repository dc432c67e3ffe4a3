"""Batches: a request for many jobs expanded into its items, and a batch's progress and ETA (pure rules).

A request is either a list of explicit items (each a template, an optional version and its parameters) or one
template with a list of ``inputs`` (artifact ids, bound to the image parameter ``input_param``), a parameter
``grid`` (``{"name": [a, b, c]}``: the cartesian product) and ``params`` (fixed values). The order of the
items is stable: inputs in the order given, and for each input the grid's combinations in the order of its
names as given, the last name varying fastest (``itertools.product``). The number of items is bounded by the
setting ``max_batch_items``, checked before anything is expanded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import product
from typing import Any

from orchestrator.core.errors import InvalidInput
from orchestrator.core.limits import check_count
from orchestrator.core.pipeline_runs import RunState
from orchestrator.core.states import JobState

ETA_WINDOW = 50  # the ETA's rate is measured over the last this many finished jobs


@dataclass(frozen=True)
class Item:
    """One job of a batch, before validation: its index in the request, template and parameters."""

    index: int
    template: str
    params: dict[str, Any]
    version: int | None = None


@dataclass(frozen=True)
class Grid:
    """One template over ``inputs`` x the cartesian product of ``grid``, with ``params`` fixed."""

    template: str
    version: int | None = None
    inputs: Sequence[str] = ()
    input_param: str | None = None
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)


def grid_size(g: Grid) -> int:
    """How many items ``g`` expands to (without expanding it)."""
    return max(len(g.inputs), 1) * math.prod(len(v) for v in g.grid.values())


def check_grid(g: Grid) -> None:
    """The shape of a grid request: inputs need the parameter they are bound to, and no parameter is given
    twice (fixed, grid, input) nor with an empty list of values."""
    if g.inputs and not g.input_param:
        raise InvalidInput("a batch with inputs names the image parameter they are bound to (input_param)",
                           errors=[{"param": "input_param", "message": "missing"}])
    if g.input_param and not g.inputs:
        raise InvalidInput(f"input_param {g.input_param!r} is given without inputs",
                           errors=[{"param": "inputs", "message": "empty"}])
    for name, values in g.grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise InvalidInput(f"grid parameter {name!r} needs a non-empty list of values",
                               errors=[{"param": name, "message": "empty grid values"}])
    named = [*g.params, *g.grid, *([g.input_param] if g.input_param else [])]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise InvalidInput(f"parameter(s) {', '.join(twice)} given more than once (fixed, grid or input_param)",
                           errors=[{"param": n, "message": "given more than once"} for n in twice])


def expand(g: Grid, max_items: int) -> list[Item]:
    """The items of a grid request, in the stable order of the module's docstring; over ``max_items`` is
    refused before anything is expanded."""
    check_grid(g)
    check_count(grid_size(g), "items in the batch", "max_batch_items", max_items)
    names = list(g.grid)
    combos = list(product(*(g.grid[n] for n in names)))
    inputs: Sequence[str | None] = g.inputs or [None]
    items = []
    for art in inputs:
        for combo in combos:
            params = dict(g.params) | dict(zip(names, combo, strict=True))
            if art is not None and g.input_param:
                params[g.input_param] = art
            items.append(Item(len(items), g.template, params, g.version))
    return items


def explicit(items: Sequence[Mapping[str, Any]], max_items: int) -> list[Item]:
    """Items given one by one (``{"template", "version"?, "params"}``), numbered in the request's order."""
    check_count(len(items), "items in the batch", "max_batch_items", max_items)
    if not items:
        raise InvalidInput("a batch needs at least one item", errors=[{"param": "items", "message": "empty"}])
    return [Item(i, it["template"], dict(it.get("params") or {}), it.get("version")) for i, it in enumerate(items)]


@dataclass(frozen=True)
class RunItem:
    """One pipeline run of a batch, before validation: its index in the request, inputs and overrides."""

    index: int
    inputs: dict[str, Any]
    params: dict[str, Any]


@dataclass(frozen=True)
class PipelineGrid:
    """One pipeline over ``inputs`` (a run each, bound to the pipeline input ``input_param``), with the step
    overrides ``params`` (step id -> parameter -> value) fixed."""

    pipeline: str
    version: int | None = None
    inputs: Sequence[str] = ()
    input_param: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


def artifact_input(declared: Mapping[str, str], name: str | None) -> str:
    """The pipeline input a batch's inputs bind to: ``name``, else the only image or video input of
    ``declared`` (input name -> type); refused when there is none or more than one to choose from."""
    if name is not None:
        if name not in declared:
            raise InvalidInput(f"the pipeline has no input {name!r} (inputs: {', '.join(declared) or 'none'})",
                               errors=[{"param": "input_param", "message": "no such input"}])
        return name
    media = [n for n, kind in declared.items() if kind in ("image", "video")]
    if len(media) != 1:
        raise InvalidInput(f"the pipeline has {len(media)} image/video inputs; name the one the batch's inputs "
                           "bind to (input_param)", errors=[{"param": "input_param", "message": "missing"}])
    return media[0]


def expand_runs(g: PipelineGrid, input_param: str, max_items: int) -> list[RunItem]:
    """A run per input, in the order given (``input_param`` resolved by ``artifact_input``)."""
    check_count(len(g.inputs), "items in the batch", "max_batch_items", max_items)
    if not g.inputs:
        raise InvalidInput("a pipeline batch needs inputs (one run each)",
                           errors=[{"param": "inputs", "message": "empty"}])
    return [RunItem(i, {input_param: art}, {k: dict(v) if isinstance(v, Mapping) else v
                                            for k, v in g.params.items()})
            for i, art in enumerate(g.inputs)]


@dataclass(frozen=True)
class Progress:
    """Where a batch stands: counts by state, the share finished and, while jobs remain, the time left."""

    total: int
    counts: dict[str, int]
    done: int
    fraction: float
    eta_s: float | None
    finished: bool


def progress(counts: Mapping[JobState, int], finished_at: Iterable[datetime], created_at: datetime,
             at: datetime) -> Progress:
    """``counts`` by state of a batch's jobs; ``finished_at`` the finish times of its terminal jobs (any order;
    only the last ``ETA_WINDOW`` are used). The rate is the finished jobs per second over that window (from
    the batch's creation when only one has finished); the ETA is what remains at that rate, counted from the
    last finish, never below 0. None before any job finished, and once all have."""
    return _progress({s.value: n for s, n in counts.items()}, sum(n for s, n in counts.items() if s.terminal),
                     finished_at, created_at, at)


def run_progress(counts: Mapping[RunState, int], finished_at: Iterable[datetime], created_at: datetime,
                 at: datetime) -> Progress:
    """``progress`` of a batch of pipeline runs: counted in runs (by run state), not jobs, so a batch whose
    runs are not all final is not finished even when every job so far is (a waiting step has no job)."""
    return _progress({s.value: n for s, n in counts.items()}, sum(n for s, n in counts.items() if s.final),
                     finished_at, created_at, at)


def _progress(counts: Mapping[str, int], done: int, finished_at: Iterable[datetime], created_at: datetime,
              at: datetime) -> Progress:
    total = sum(counts.values())
    remaining = total - done
    times = sorted(finished_at)[-ETA_WINDOW:]
    eta: float | None = None
    if remaining and times:
        if len(times) >= 2 and times[-1] > times[0]:
            rate = (len(times) - 1) / (times[-1] - times[0]).total_seconds()
        else:
            rate = len(times) / max((times[-1] - created_at).total_seconds(), 1e-3)
        eta = max(remaining / rate - (at - times[-1]).total_seconds(), 0.0)
    return Progress(total=total, counts=dict(sorted(counts.items())),
                    done=done, fraction=done / total if total else 1.0, eta_s=eta, finished=remaining == 0)
