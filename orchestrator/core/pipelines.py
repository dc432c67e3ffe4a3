"""Pipeline format v1: a chain of template steps, ``pipeline.json``; in the library on disk one lies in
``<library>/<name>/v<N>/pipeline.json`` (read by ``runtime.pipeline_library``), or it is published over the
API and stored as a row (``db.tables.PipelineVersionRow``).

Pure logic only, no files, no database: a definition parsed (``parse``), checked against the template
versions it names (``check``: unique step ids, every template version exists, every bound parameter exists,
every required parameter is bound, types match, every reference resolves, the step graph is acyclic), its
topological order and its content hash. Every problem is named in ``InvalidInput.extra["errors"]`` as
``{"param": "steps[1].params.image", "message": ...}``.

A step's parameter is bound to one of three things::

    "strength": 0.5                                  a constant (checked against the template's parameter)
    "image": {"input": "frame"}                      an input of the pipeline, given when a run starts
    "image": {"step": "restyle", "output": "image"}  an output of an earlier step (an artifact)

How a run uses this (app/pipeline_runs.py, core/pipeline_runs.py; docs/pipelines.md): a run records the pipeline
version (row id and content hash) and its input values; the steps whose references are all satisfied
(``ready_steps``) become ordinary jobs, their parameters from ``resolve_params`` (a step reference becomes
the artifact id the finished step stored for that output); when a job succeeds its outputs are recorded for
the run and the next steps become ready, in ``order``. ``CheckedPipeline.templates`` pins the content hash of
every template version, so a run (and a reuse key: template hash + resolved parameters + input content hashes)
never depends on anything that can change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, NotFound
from orchestrator.core.graph import nodes_by_title

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"  # as a template name
ID = r"^[a-z_][a-z0-9_]{0,62}$"  # step ids, input and output names: as a template parameter name

# The type of the files a save node writes (a template's output is typed by the class of its output node).
OUTPUT_TYPES: dict[str, tpl.ParamType] = {
    "SaveImage": tpl.ParamType.image, "MediaLabSaveImage": tpl.ParamType.image,
    "SaveAnimatedWEBP": tpl.ParamType.image, "SaveAnimatedPNG": tpl.ParamType.image,
    "PreviewImage": tpl.ParamType.image,
    "SaveVideo": tpl.ParamType.video, "MediaLabSaveVideo": tpl.ParamType.video,
}

# source type -> the parameter types it may bind (besides its own): a whole number is a number, a string
# may name a choice (the value is checked against the choices when a run starts).
WIDENS: dict[tpl.ParamType, set[tpl.ParamType]] = {
    tpl.ParamType.int: {tpl.ParamType.float},
    tpl.ParamType.string: {tpl.ParamType.choice},
}


class PipelineInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID)
    type: tpl.ParamType
    description: str = ""


class PipelineOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID)
    step: str
    output: str


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID)
    template: str
    version: int = Field(ge=1, description="Pinned: a pipeline version never changes what it runs.")
    params: dict[str, Any] = Field(default_factory=dict)


class Pipeline(BaseModel):
    """A definition as written (``pipeline.json``), parsed but not yet checked against templates."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    version: int = Field(ge=1)
    description: str = ""
    inputs: list[PipelineInput] = []
    steps: list[Step] = Field(min_length=1)
    outputs: list[PipelineOutput] = Field(min_length=1)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def body(self) -> dict[str, Any]:
        """What the content hash covers: everything but the name and version (the folder names them)."""
        return self.model_dump(mode="json", exclude={"name", "version"})


class TemplatePin(BaseModel):
    template: str
    version: int
    content_hash: str


class CheckedPipeline(BaseModel):
    """A definition that passed ``check``: what a run needs besides the definition itself."""

    pipeline: Pipeline
    content_hash: str
    order: list[str] = Field(description="Step ids in a topological order (file order among equals).")
    templates: dict[str, TemplatePin] = Field(description="Step id -> the template version it runs.")


# -- bindings ---------------------------------------------------------------------------------------------
class InputRef(BaseModel):
    input: str


class StepRef(BaseModel):
    step: str
    output: str


Binding = Any  # an InputRef, a StepRef or a constant


def binding(value: Any) -> Binding:
    """A parameter's value as written: ``{"input": n}`` or ``{"step": s, "output": o}`` is a reference,
    anything else a constant. A dict with ``input`` or ``step`` in another shape is refused (a constant
    dict that looks like a reference would be a trap)."""
    if isinstance(value, dict) and ("input" in value or "step" in value):
        if set(value) == {"input"} and isinstance(value["input"], str):
            return InputRef(input=value["input"])
        if set(value) == {"step", "output"} and all(isinstance(value[k], str) for k in value):
            return StepRef(step=value["step"], output=value["output"])
        raise ValueError('a reference is {"input": name} or {"step": id, "output": name}')
    return value


# -- parse, hash ------------------------------------------------------------------------------------------
def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(raw: Any, where: str = "pipeline") -> Pipeline:
    """The definition's structure (field names, types, name patterns); InvalidInput names each problem."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: a pipeline definition is a JSON object",
                           errors=[{"param": "(root)", "message": "not an object"}])
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as exc:
        errors = [{"param": _path(tuple(e["loc"])) or "(root)", "message": e["msg"]} for e in exc.errors()]
        raise InvalidInput(f"{where}: bad definition: " + "; ".join(f"{e['param']}: {e['message']}" for e in errors),
                           errors=errors) from exc


def content_hash(p: Pipeline) -> str:
    """sha256 of the canonical JSON of the definition without its name and version: key order, spacing and
    left-out defaults do not change it; any value does."""
    canon = json.dumps(p.body(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def output_types(t: tpl.TemplateVersion) -> dict[str, tpl.ParamType | None]:
    """Output name -> the type of artifact it stores (by the class of its output node; None: not a type a
    parameter can take, e.g. audio)."""
    titles = nodes_by_title(t.graph)
    return {o.name: OUTPUT_TYPES.get(str(t.graph.get(titles.get(o.node, ""), {}).get("class_type")))
            for o in t.manifest.outputs}


def compatible(source: tpl.ParamType, target: tpl.ParamType) -> bool:
    return source == target or target in WIDENS.get(source, set())


# -- check ------------------------------------------------------------------------------------------------
def check(p: Pipeline, templates: list[tpl.TemplateVersion], where: str | None = None) -> CheckedPipeline:
    """The definition checked against the template versions it names (any list holding them; others are
    ignored). Every problem found is reported at once, each with the path of the field it is about."""
    where = where or f"pipeline {p.ref}"
    errors: list[dict[str, str]] = []

    def problem(param: str, message: str) -> None:
        errors.append({"param": param, "message": message})

    inputs: dict[str, PipelineInput] = {}
    for i, inp in enumerate(p.inputs):
        if inp.name in inputs:
            problem(f"inputs[{i}].name", f"input name {inp.name!r} is used twice")
        inputs.setdefault(inp.name, inp)

    steps: dict[str, int] = {}
    for i, step in enumerate(p.steps):
        if step.id in steps:
            problem(f"steps[{i}].id", f"step id {step.id!r} is used by steps[{steps[step.id]}] too")
        else:
            steps[step.id] = i

    resolved: dict[int, tpl.TemplateVersion] = {}
    for i, step in enumerate(p.steps):
        try:
            resolved[i] = tpl.pick(templates, step.template, step.version)
        except NotFound as exc:  # unknown template or version, with the names that exist
            param = f"steps[{i}].template" if not any(t.name == step.template for t in templates) \
                else f"steps[{i}].version"
            problem(param, exc.message)

    used_inputs: set[str] = set()
    edges: dict[str, list[tuple[str, str]]] = {s.id: [] for s in p.steps}  # step -> [(upstream, param path)]
    for i, step in enumerate(p.steps):
        t = resolved.get(i)
        params = {q.name: q for q in t.manifest.parameters} if t else {}
        for name, raw in step.params.items():
            at = f"steps[{i}].params.{name}"
            try:
                b = binding(raw)
            except ValueError as exc:
                problem(at, str(exc))
                continue
            target = params.get(name)
            if t is not None and target is None:
                problem(at, f"{t.ref}: {tpl.unknown_parameter(t, name)}")
            if isinstance(b, InputRef):
                used_inputs.add(b.input)
                src = inputs.get(b.input)
                if src is None:
                    problem(at, f"no pipeline input {b.input!r} (inputs: {', '.join(inputs) or 'none'})")
                elif target is not None and not compatible(src.type, target.type):
                    problem(at, f"type mismatch: input {b.input!r} is {src.type.value}, {t.ref if t else ''} "
                                f"parameter {name!r} is {target.type.value}")
            elif isinstance(b, StepRef):
                if b.step == step.id:
                    problem(at, f"cycle: {step.id} -> {step.id} (a step cannot take its own output)")
                    continue
                if b.step not in steps:
                    problem(at, f"no step {b.step!r} (steps: {', '.join(steps)})")
                    continue
                edges[step.id].append((b.step, at))
                up = resolved.get(steps[b.step])
                if up is None:
                    continue  # its template is already reported
                types = output_types(up)
                if b.output not in types:
                    problem(at, f"step {b.step!r} ({up.ref}) has no output {b.output!r} "
                                f"(outputs: {', '.join(types)})")
                elif target is not None:
                    out_type = types[b.output]
                    if out_type is None or not compatible(out_type, target.type):
                        problem(at, f"type mismatch: step {b.step!r} output {b.output!r} is "
                                    f"{out_type.value if out_type else 'not an image or video'}, "
                                    f"{t.ref if t else ''} parameter {name!r} is {target.type.value}")
        if t is not None:
            for q in t.manifest.parameters:
                if q.required and q.name not in step.params:
                    problem(f"steps[{i}].params.{q.name}", f"{t.ref} parameter {q.name!r} ({q.type.value}) is "
                                                           "required: bind it to a constant, an input or a step")
            constants = {n: v for n, v in step.params.items()
                         if n in params and not isinstance(_safe_binding(v), InputRef | StepRef)}
            errors.extend(_constant_errors(t, constants, i))

    for i, inp in enumerate(p.inputs):
        if inp.name not in used_inputs:
            problem(f"inputs[{i}].name", f"input {inp.name!r} is bound by no step")

    outputs: set[str] = set()
    for i, out in enumerate(p.outputs):
        if out.name in outputs:
            problem(f"outputs[{i}].name", f"output name {out.name!r} is used twice")
        outputs.add(out.name)
        if out.step not in steps:
            problem(f"outputs[{i}].step", f"no step {out.step!r} (steps: {', '.join(steps)})")
            continue
        up = resolved.get(steps[out.step])
        if up is not None and out.output not in output_types(up):
            problem(f"outputs[{i}].output", f"step {out.step!r} ({up.ref}) has no output {out.output!r} "
                                            f"(outputs: {', '.join(output_types(up))})")

    order, cycle = topological_order(list(steps), {k: [u for u, _ in v] for k, v in edges.items()})
    if cycle:
        closing = next((at for u, at in edges[cycle[-2]] if u == cycle[-1]), "steps")
        problem(closing, "cycle: " + " -> ".join(reversed(cycle)))

    if errors:
        raise InvalidInput(f"{where}: " + "; ".join(f"{e['param']}: {e['message']}" for e in errors),
                           errors=errors)
    pins = {s.id: TemplatePin(template=resolved[i].name, version=resolved[i].version,
                              content_hash=resolved[i].content_hash) for i, s in enumerate(p.steps)}
    return CheckedPipeline(pipeline=p, content_hash=content_hash(p), order=order, templates=pins)


def _safe_binding(value: Any) -> Binding:
    try:
        return binding(value)
    except ValueError:
        return InputRef(input="")  # reported already; not a constant to check


def _constant_errors(t: tpl.TemplateVersion, constants: dict[str, Any], i: int) -> list[dict[str, str]]:
    """The template's own checks (type, range, choices) on the constants only."""
    try:
        tpl.validate_params(t, constants)
    except InvalidInput as exc:
        return [{"param": f"steps[{i}].params.{e['param']}", "message": f"{t.ref}: {e['message']}"}
                for e in exc.extra.get("errors", []) if e["param"] in constants]
    return []


def topological_order(ids: list[str], deps: dict[str, list[str]]) -> tuple[list[str], list[str] | None]:
    """(order, None), the ids in an order where every step comes after the steps it takes outputs from (file
    order among those free to go), or ([], cycle) where cycle runs against the arrows: ``[a, b, a]`` for a
    taking b's output and b taking a's (printed reversed, it reads as data flows: a -> b -> a)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in deps.get(n, []):
            if d not in deps:
                continue
            if state.get(d) == 1:
                return [*path[path.index(d):], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in ids:
        if n not in state:
            cycle = visit(n)
            if cycle:
                return [], cycle
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(ids):
        for n in ids:
            if n not in done and all(d in done or d not in deps for d in deps.get(n, [])):
                order.append(n)
                done.add(n)
                break
    return order, None


# -- what a run will use ----------------------------------------------------------------------------------
def upstream(step: Step) -> list[str]:
    """The ids of the steps whose outputs this step takes."""
    return [b.step for b in map(_safe_binding, step.params.values()) if isinstance(b, StepRef)]


def ready_steps(c: CheckedPipeline, finished: set[str], started: set[str]) -> list[str]:
    """The steps, in ``order``, not started yet whose upstream steps have all finished."""
    by_id = {s.id: s for s in c.pipeline.steps}
    return [sid for sid in c.order if sid not in started and sid not in finished
            and all(u in finished for u in upstream(by_id[sid]))]


def resolve_params(step: Step, inputs: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The job parameters of a step: constants as written, an input reference as the run's value for it, a
    step reference as what that step stored for the output (``outputs[step][output]``, an artifact id).
    A reference not satisfied yet is an InvalidInput naming it (``ready_steps`` says when none is)."""
    values = {}
    for name, raw in step.params.items():
        b = binding(raw)
        if isinstance(b, InputRef):
            if b.input not in inputs:
                raise InvalidInput(f"step {step.id}: input {b.input!r} has no value", param=f"inputs.{b.input}")
            values[name] = inputs[b.input]
        elif isinstance(b, StepRef):
            if b.output not in outputs.get(b.step, {}):
                raise InvalidInput(f"step {step.id}: step {b.step!r} has not stored its output {b.output!r}")
            values[name] = outputs[b.step][b.output]
        else:
            values[name] = b
    return values
