"""The daggr graph of a chain: a ``FnNode`` per step whose function runs the step as an orchestrator job
(upload file inputs, submit, follow the job's events with a deadline, cancel on expiry, download the
outputs into daggr's files folder). Import after ``offline.apply`` (daggr reads its settings at import)."""

from __future__ import annotations

import inspect
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gradio as gr
from daggr import FnNode, Graph
from daggr.state import get_daggr_files_dir

from orchestrator.api.schemas import EventOut, JobOut
from orchestrator.cli.remote import Remote
from orchestrator.core.errors import MediaLabError
from orchestrator.workbench.chain import FILE_TYPES, Step

QUEUE_SLACK_S = 120.0  # the deadline of a node: the template's timeout_s plus this for the queue


class Runs:
    """What the nodes did in this process: per step, the jobs submitted and the parameters last submitted
    (what ``to_pipeline`` saves)."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[str]] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def record(self, step: str, job_id: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.jobs.setdefault(step, []).append(job_id)
            self.params[step] = dict(params)


def pool_models(remote: Remote) -> dict[str, list[str]]:
    """Models folder -> the files some server of the pool has."""
    found: dict[str, set[str]] = {}
    for s in remote.servers():
        for folder, files in (s.get("models") or {}).items():
            found.setdefault(folder, set()).update(files)
    return {f: sorted(v) for f, v in found.items()}


def component(p: dict[str, Any], default: Any, models: dict[str, list[str]]) -> Any:
    """The gradio control of a template parameter (the manifest's ``parameters`` entry)."""
    t, label = p["type"], p["name"]
    info = p.get("help") or None
    if t == "string":
        return gr.Textbox(label=label, value=default or "", info=info)
    if t == "int":
        return gr.Number(label=label, value=default, precision=0, minimum=p.get("min"), maximum=p.get("max"),
                         info=info)
    if t == "float":
        if p.get("min") is not None and p.get("max") is not None:
            return gr.Slider(p["min"], p["max"], value=default, label=label, info=info)
        return gr.Number(label=label, value=default, info=info)
    if t == "bool":
        return gr.Checkbox(label=label, value=bool(default), info=info)
    if t == "choice":
        return gr.Dropdown(choices=list(p.get("choices") or []), value=default, label=label, info=info)
    if t == "model":
        have = models.get(p.get("folder") or "", [])
        value = default if default in have or not have else have[0]
        return gr.Dropdown(choices=have or ([default] if default else []), value=value, label=label,
                           allow_custom_value=True, info=info)
    if t == "image":
        return gr.Image(label=label, type="filepath", value=default)
    if t == "video":
        return gr.Video(label=label, value=default)
    return gr.Textbox(label=label, value="" if default is None else str(default), info=info)


def local_path(value: Any) -> Path | None:
    """A file the canvas handed over (a path, a ``/file/...`` URL or a gradio file dict), else None."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("url")
    if not isinstance(value, str) or not value:
        return None
    if "/file/" in value:
        value = urlparse(value).path.split("/file", 1)[1]
    path = Path(value)
    return path if path.is_absolute() and path.is_file() else None


def coerce(p: dict[str, Any], value: Any) -> Any:
    """A control's value as the job parameter; None (or an empty text) leaves the template's default."""
    if value is None or (value == "" and p["type"] != "string"):
        return None
    if p["type"] == "int":
        return int(value)
    if p["type"] == "float":
        return float(value)
    if p["type"] == "bool":
        return bool(value)
    return value


def follow(remote: Remote, job: JobOut, deadline_s: float) -> JobOut:
    """Follow the job's events until its final state; past ``deadline_s`` cancel it and raise. The stream is
    read in a thread so the deadline holds even while the service is silent."""
    events: queue.Queue[EventOut | BaseException | None] = queue.Queue()

    def read() -> None:
        try:
            for e in remote.events(job.id):
                events.put(e)
        except BaseException as exc:  # handed to the waiting node
            events.put(exc)
        events.put(None)

    threading.Thread(target=read, daemon=True, name=f"events-{job.id[:8]}").start()
    end = time.monotonic() + deadline_s
    while True:
        try:
            item = events.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            remote.cancel(job.id)
            raise RuntimeError(f"job {job.id} ran past the workbench's deadline of {deadline_s:g} s: "
                               "cancelled") from None
        if isinstance(item, BaseException):
            raise RuntimeError(f"job {job.id}: lost its event stream: {item}") from item
        if item is None or (item.state is not None and item.state.terminal):
            return remote.job(job.id)


def step_function(remote: Remote, step: Step, runs: Runs, deadline_s: float | None = None) -> Callable[..., Any]:
    """The node's function: keyword arguments are the template's parameters; returns, per template output,
    the local file and then, per output, its artifact id."""
    params_by_name = {p["name"]: p for p in step.parameters}
    deadline = deadline_s if deadline_s is not None else step.timeout_s + QUEUE_SLACK_S

    def run(**kw: Any) -> tuple[Any, ...]:
        params: dict[str, Any] = {}
        try:
            for name, value in kw.items():
                p = params_by_name[name]
                if p["type"] in FILE_TYPES:
                    path = local_path(value)
                    value = remote.upload(path).id if path else (value or None)
                value = coerce(p, value)
                if value is not None:
                    params[name] = value
            job = remote.submit(step.template.name, params, step.template.version, timeout_s=step.timeout_s,
                                idempotency_key=f"workbench-{uuid.uuid4().hex}")
            runs.record(step.id, job.id, params)
            job = follow(remote, job, deadline)
            if job.state != "SUCCEEDED":
                raise RuntimeError(f"job {job.id} {job.state}: {job.error or 'no error recorded'}")
            by_output = {a.output_name: a for a in job.outputs}
            files, ids = [], []
            for out in step.outputs:
                art = by_output.get(out)
                if art is None:
                    raise RuntimeError(f"job {job.id} SUCCEEDED without its output '{out}'")
                dest = get_daggr_files_dir() / "outputs" / f"{step.id}-{job.id[:8]}-{art.filename}"
                files.append(str(remote.download(art.id, dest)))
                ids.append(art.id)
        except MediaLabError as exc:  # the service's problem detail, on the node
            raise RuntimeError(f"{step.template.name}@v{step.template.version}: {exc.message}") from exc
        return (*files, *ids)

    run.__name__ = step.id
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # FnNode checks ports against it
        [inspect.Parameter(p["name"], inspect.Parameter.KEYWORD_ONLY) for p in step.parameters])
    return run


def build_graph(remote: Remote, steps: list[Step], runs: Runs, name: str = "Media Lab workbench",
                deadline_s: float | None = None, persist_key: str | bool = "medialab_workbench") -> Graph:
    """One node per step, in order; a parameter bound upstream is an edge from that node's hidden
    ``<output>_artifact`` port, so the next node gets the artifact id, not a re-upload."""
    models = pool_models(remote)
    nodes: dict[str, FnNode] = {}
    for step in steps:
        inputs: dict[str, Any] = {}
        for p in step.parameters:
            param = p["name"]
            if param in step.bound:
                up = step.bound[param]
                inputs[param] = getattr(nodes[up.step], f"{up.output}_artifact")
            else:
                default = step.defaults.get(param, p.get("default"))
                inputs[param] = component({**p, "name": step.inputs.get(param, param)}, default, models)
                if p["type"] == "model" and inputs[param].value != default:
                    step.defaults[param] = inputs[param].value  # what the pool has: a saved chain keeps it
        kind = "video" if step.template.kind == "video" else "image"
        shown = {o: (gr.Video if kind == "video" else gr.Image)(label=o) for o in step.outputs}
        hidden = {f"{o}_artifact": None for o in step.outputs}
        nodes[step.id] = FnNode(step_function(remote, step, runs, deadline_s), name=step.id, inputs=inputs,
                                outputs={**shown, **hidden}, concurrent=True)
    return Graph(name, nodes=list(nodes.values()), persist_key=persist_key)


RUN_FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def pipeline_function(remote: Remote, definition: dict[str, Any], params: dict[str, dict[str, Any]], runs: Runs,
                      deadline_s: float) -> Callable[..., Any]:
    """The function of a whole-pipeline node: keyword arguments are the pipeline's inputs; starts a run
    (``POST /v1/pipelines/{name}/runs``), polls it until it ends or the deadline passes (then cancels it),
    downloads the pipeline's outputs; returns the files, then the artifact ids."""
    name, version = definition["name"], definition["version"]
    outputs = [o["name"] for o in definition.get("outputs") or []]
    node = name.replace("-", "_")

    def run(**kw: Any) -> tuple[Any, ...]:
        try:
            inputs: dict[str, Any] = {}
            for key, value in kw.items():
                p = params[key]
                if p["type"] in FILE_TYPES:
                    path = local_path(value)
                    value = remote.upload(path).id if path else (value or None)
                value = coerce(p, value)
                if value is not None:
                    inputs[key] = value
            started = remote.request("POST", f"/v1/pipelines/{name}/runs",
                                     json={"version": version, "inputs": inputs}).json()
            runs.record(node, f"run:{started['id']}", inputs)
            end = time.monotonic() + deadline_s
            while True:
                current = remote.request("GET", f"/v1/pipeline-runs/{started['id']}").json()
                if current["state"] in RUN_FINAL:
                    break
                if time.monotonic() > end:
                    remote.request("POST", f"/v1/pipeline-runs/{started['id']}/cancel")
                    raise RuntimeError(f"pipeline run {started['id']} ran past the workbench's deadline of "
                                       f"{deadline_s:g} s: cancelled")
                time.sleep(0.5)
            if current["state"] != "SUCCEEDED":
                raise RuntimeError(f"pipeline run {current['id']} {current['state']}: "
                                   f"{current.get('error') or 'no error recorded'}")
            files, ids = [], []
            for out in outputs:
                art_id = (current.get("outputs") or {}).get(out)
                if not art_id:
                    raise RuntimeError(f"pipeline run {current['id']} SUCCEEDED without its output '{out}'")
                dest = get_daggr_files_dir() / "outputs" / f"{node}-{current['id'][:8]}-{out}-{art_id[:8]}"
                art = remote.request("GET", f"/v1/artifacts/{art_id}").json()
                dest = dest.with_name(f"{dest.name}-{art['filename']}")
                files.append(str(remote.download(art_id, dest)))
                ids.append(art_id)
        except MediaLabError as exc:
            raise RuntimeError(f"pipeline {name}@v{version}: {exc.message}") from exc
        return (*files, *ids)

    run.__name__ = node
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in params])
    return run


def build_pipeline_graph(remote: Remote, definition: dict[str, Any], steps: list[Step], runs: Runs,
                         deadline_s: float | None = None, persist_key: str | bool = "medialab_workbench") -> Graph:
    """One node for a whole pipeline version (one orchestrator pipeline run per node run): a control per
    pipeline input (drawn from the template parameter it feeds), a shown and a hidden port per output."""
    models = pool_models(remote)
    params: dict[str, dict[str, Any]] = {}
    for i in definition.get("inputs") or []:
        fed = next((p for s in steps for p in s.parameters if s.inputs.get(p["name"]) == i["name"]), {})
        params[i["name"]] = {**fed, "name": i["name"], "type": i["type"]}
    deadline = deadline_s if deadline_s is not None else sum(s.timeout_s for s in steps) + QUEUE_SLACK_S
    outputs = [o["name"] for o in definition.get("outputs") or []]
    kinds = {s.id: s.template.kind for s in steps}
    shown = {o["name"]: (gr.Video if kinds.get(o["step"]) == "video" else gr.Image)(label=o["name"])
             for o in definition.get("outputs") or []}
    node = FnNode(pipeline_function(remote, definition, params, runs, deadline),
                  name=definition["name"].replace("-", "_"),
                  inputs={k: component(p, p.get("default"), models) for k, p in params.items()},
                  outputs={**shown, **{f"{o}_artifact": None for o in outputs}}, concurrent=True)
    return Graph(f"Media Lab workbench: pipeline {definition['name']} v{definition['version']}", nodes=[node],
                 persist_key=persist_key)
