"""A workbench chain as data (no daggr here): steps, each a template at a version whose parameters are bound
to an upstream step's output, to a control the canvas shows, or to a fixed value; read from a list of
templates or from a pipeline version, and written back as a pipeline definition."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.api.schemas import TemplateVersionOut

FILE_TYPES = ("image", "video")


@dataclass(frozen=True)
class Upstream:
    """A parameter fed by an earlier step's output (its artifact id, on a hidden port)."""

    step: str
    output: str


@dataclass
class Step:
    """One node: ``bound`` holds the parameters fed by upstream steps; ``defaults`` the controls' starting
    values (a pipeline's constants, ``--set``); ``inputs`` names the parameters that were a pipeline's inputs
    (parameter -> input name)."""

    id: str
    template: TemplateVersionOut
    bound: dict[str, Upstream] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return list((self.template.manifest or {}).get("parameters", []))

    @property
    def outputs(self) -> list[str]:
        return [o["name"] for o in (self.template.manifest or {}).get("outputs", [])]

    @property
    def timeout_s(self) -> float:
        return float((self.template.manifest or {}).get("timeout_s") or 600)


def step_id(template: str, taken: set[str]) -> str:
    """A pipeline step id (``[a-z_][a-z0-9_]*``) for a template name, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9_]", "_", template.lower()) or "step"
    base = base if re.match(r"[a-z_]", base) else f"s_{base}"
    sid, n = base, 1
    while sid in taken:
        n += 1
        sid = f"{base}_{n}"
    return sid


def from_templates(templates: list[TemplateVersionOut]) -> list[Step]:
    """A linear chain: each step's first image/video parameter takes the previous step's first output."""
    steps: list[Step] = []
    for tv in templates:
        step = Step(step_id(tv.name, {s.id for s in steps}), tv)
        if steps and steps[-1].outputs:
            first = next((p["name"] for p in step.parameters if p["type"] in FILE_TYPES), None)
            if first:
                step.bound[first] = Upstream(steps[-1].id, steps[-1].outputs[0])
        steps.append(step)
    return steps


def from_pipeline(definition: dict[str, Any], templates: dict[str, TemplateVersionOut]) -> list[Step]:
    """A pipeline version (``GET /v1/pipelines/{name}/versions/{v}``: ``steps``, ``order``) as steps in run
    order; ``templates`` maps step id -> its pinned template version."""
    by_id = {s["id"]: s for s in definition.get("steps") or []}
    steps = []
    for sid in definition.get("order") or list(by_id):
        raw = by_id[sid]
        step = Step(sid, templates[sid])
        for name, value in (raw.get("params") or {}).items():
            if isinstance(value, dict) and "step" in value:
                step.bound[name] = Upstream(value["step"], value["output"])
            elif isinstance(value, dict) and "input" in value:
                step.inputs[name] = value["input"]
            else:
                step.defaults[name] = value
        steps.append(step)
    return steps


def to_pipeline(steps: list[Step], submitted: dict[str, dict[str, Any]], description: str = "") -> dict[str, Any]:
    """The chain as a pipeline definition (the body of ``POST /v1/pipelines/{name}/versions``): upstream
    bindings stay bindings; file parameters fed by the user become pipeline inputs; the rest are the values
    each node last submitted (``submitted``: step id -> params), else the controls' defaults. The outputs are
    those of the steps no other step reads."""
    inputs: list[dict[str, Any]] = []
    body_steps = []
    read = {u.step for s in steps for u in s.bound.values()}
    for s in steps:
        params: dict[str, Any] = {}
        last = submitted.get(s.id, {})
        for p in s.parameters:
            name = p["name"]
            if name in s.bound:
                params[name] = {"step": s.bound[name].step, "output": s.bound[name].output}
            elif p["type"] in FILE_TYPES or name in s.inputs:
                input_name = s.inputs.get(name) or (name if len(steps) == 1 else f"{s.id}_{name}")
                if input_name not in {i["name"] for i in inputs}:
                    inputs.append({"name": input_name, "type": p["type"]})
                params[name] = {"input": input_name}
            elif name in last and last[name] is not None:
                params[name] = last[name]
            elif s.defaults.get(name) is not None:
                params[name] = s.defaults[name]
        body_steps.append({"id": s.id, "template": s.template.name, "version": s.template.version,
                           "params": params})
    outputs = [{"name": o if len(steps) == 1 else f"{s.id}_{o}", "step": s.id, "output": o}
               for s in steps if s.id not in read for o in s.outputs]
    return {"description": description or "Saved from the workbench.", "inputs": inputs, "steps": body_steps,
            "outputs": outputs}
