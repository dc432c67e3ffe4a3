"""The advance rule of a pipeline run (pure: no database, no jobs).

Given the run's steps' states and stored outputs, ``plan`` says which steps to submit now (in the pipeline's
order), which waiting steps to cancel, and the run's state: RUNNING while a step's job is active or a step
can still start, then SUCCEEDED (every step succeeded or was reused; the run's outputs are the pipeline's),
FAILED (a step failed) or CANCELLED. A failed or cancelled step stops the run from starting anything else;
the run ends once no step is active. ``app.pipeline_runs`` does the I/O and calls it whenever a step's job
ends, so calling it again with the same rows plans the same thing (idempotent).

``reuse_key`` is what makes a step reusable: the template version's content hash, the step's validated
parameters (canonical JSON) with each input artifact replaced by its content hash (sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from enum import StrEnum
from typing import Any

from orchestrator.core import pipelines as pl
from orchestrator.core.errors import InvalidInput


class StepState(StrEnum):
    WAITING = "WAITING"  # not submitted yet
    QUEUED = "QUEUED"  # its job is queued or running (shown as the job's state)
    RUNNING = "RUNNING"  # shown only: stored as QUEUED
    SUCCEEDED = "SUCCEEDED"
    REUSED = "REUSED"  # took a succeeded job's outputs, ran nothing
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class RunState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self != RunState.RUNNING


DONE = frozenset({StepState.SUCCEEDED, StepState.REUSED})
ACTIVE = frozenset({StepState.QUEUED, StepState.RUNNING})
ENDED = frozenset({StepState.FAILED, StepState.CANCELLED})


@dataclasses.dataclass(frozen=True)
class Plan:
    submit: list[str]  # step ids to submit now, in order
    cancel: list[str]  # waiting step ids to mark CANCELLED
    state: RunState
    outputs: dict[str, Any]  # the pipeline's outputs (SUCCEEDED only)
    error: dict[str, Any] | None = None  # FAILED: the first failed step


def plan(c: pl.CheckedPipeline, states: dict[str, StepState], outputs: dict[str, dict[str, Any]],
         cancel_requested: bool = False) -> Plan:
    """What to do now with a run of ``c`` whose steps are in ``states`` (every step id of ``c``)."""
    missing = [s for s in c.order if s not in states]
    if missing:
        raise ValueError(f"no state for steps {missing}")
    active = [s for s in c.order if states[s] in ACTIVE]
    if cancel_requested:
        cancel = [s for s in c.order if states[s] == StepState.WAITING]
        return Plan([], cancel, RunState.RUNNING if active else RunState.CANCELLED, {})
    failed = [s for s in c.order if states[s] == StepState.FAILED]
    if failed or any(states[s] == StepState.CANCELLED for s in c.order):
        if active:
            return Plan([], [], RunState.RUNNING, {})
        if failed:
            return Plan([], [], RunState.FAILED, {}, {"step": failed[0]})
        return Plan([], [], RunState.CANCELLED, {})
    done = {s for s in c.order if states[s] in DONE}
    if len(done) == len(c.order):
        out = {o.name: outputs.get(o.step, {}).get(o.output) for o in c.pipeline.outputs}
        return Plan([], [], RunState.SUCCEEDED, out)
    started = {s for s in c.order if states[s] != StepState.WAITING}
    return Plan(pl.ready_steps(c, done, started), [], RunState.RUNNING, {})


def with_overrides(step: pl.Step, overrides: dict[str, Any]) -> pl.Step:
    """The step with a run's constant overrides of its parameters (checked by ``check_overrides``)."""
    return step.model_copy(update={"params": {**step.params, **overrides}}) if overrides else step


def check_overrides(c: pl.CheckedPipeline, overrides: dict[str, Any]) -> list[dict[str, str]]:
    """The problems of a run's ``params`` (step id -> parameter -> constant): an unknown step, or a parameter
    bound to an input or a step output (only constants may be overridden; the template checks the values)."""
    errors: list[dict[str, str]] = []
    steps = {s.id: s for s in c.pipeline.steps}
    if not isinstance(overrides, dict):
        return [{"param": "params", "message": "must map step ids to {parameter: value}"}]
    for sid, values in overrides.items():
        if sid not in steps:
            errors.append({"param": f"params.{sid}", "message": f"no step {sid!r} (steps: {', '.join(c.order)})"})
            continue
        if not isinstance(values, dict):
            errors.append({"param": f"params.{sid}", "message": "must map parameter names to values"})
            continue
        for name in values:
            bound = steps[sid].params.get(name)
            if isinstance(bound, dict) and ("input" in bound or "step" in bound):
                errors.append({"param": f"params.{sid}.{name}",
                               "message": "is bound to an input or a step output; only constants may be set"})
    return errors


def resolve(c: pl.CheckedPipeline, step_id: str, inputs: dict[str, Any], outputs: dict[str, dict[str, Any]],
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job parameters of a ready step (``core.pipelines.resolve_params`` with the run's overrides)."""
    step = next(s for s in c.pipeline.steps if s.id == step_id)
    return pl.resolve_params(with_overrides(step, (overrides or {}).get(step_id, {})), inputs, outputs)


def check_inputs(c: pl.CheckedPipeline, inputs: Any, artifact_types: dict[str, str | None]) -> list[dict[str, str]]:
    """The problems of a run's input values: a missing, unknown or wrong-typed one. ``artifact_types``: the
    content type of each artifact id given (None: no such artifact)."""
    if not isinstance(inputs, dict):
        return [{"param": "inputs", "message": "must map input names to values"}]
    errors: list[dict[str, str]] = []
    declared = {i.name: i for i in c.pipeline.inputs}
    for name in inputs:
        if name not in declared:
            errors.append({"param": f"inputs.{name}", "message": f"no such input (inputs: "
                                                                 f"{', '.join(declared) or 'none'})"})
    for name, decl in declared.items():
        where, value, kind = f"inputs.{name}", inputs.get(name), decl.type.value
        if value is None:
            errors.append({"param": where, "message": f"missing ({kind})"})
        elif kind in ("image", "video"):
            ctype = artifact_types.get(value) if isinstance(value, str) else None
            if ctype is None:
                errors.append({"param": where, "message": f"unknown artifact {str(value)[:80]!r}"})
            elif not ctype.startswith(f"{kind}/"):
                errors.append({"param": where, "message": f"artifact is {ctype}, not an {kind}"})
        elif kind == "bool" and not isinstance(value, bool):
            errors.append({"param": where, "message": "must be true or false"})
        elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append({"param": where, "message": "must be a whole number"})
        elif kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            errors.append({"param": where, "message": "must be a number"})
        elif kind in ("string", "choice", "model") and not isinstance(value, str):
            errors.append({"param": where, "message": "must be a string"})
    return errors


def reuse_key(template_hash: str, values: dict[str, Any], artifact_sha256: dict[str, str]) -> str:
    """sha256 of (template content hash, validated values with each artifact parameter as its sha256)."""
    keyed = {k: ({"sha256": artifact_sha256[k]} if k in artifact_sha256 else v) for k, v in values.items()}
    canon = json.dumps({"template": template_hash, "params": keyed}, sort_keys=True, separators=(",", ":"),
                       default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


def refuse(errors: list[dict[str, str]], what: str = "pipeline run") -> None:
    """An InvalidInput (422) naming every problem, when there is any."""
    if errors:
        raise InvalidInput(f"{what}: " + "; ".join(f"{e['param']}: {e['message']}" for e in errors), errors=errors)
