"""Admission: everything checked before a job or a template version is accepted."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from orchestrator.core import limits, sandbox
from orchestrator.core import templates as tpl
from orchestrator.core.burst import BurstPolicy
from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.errors import InvalidInput
from orchestrator.core.graph import nodes_by_title
from orchestrator.core.placement import unrunnable_reason
from orchestrator.db.servers import recorded_views, server_rows
from orchestrator.db.tables import (
    Artifact,
    TemplateVersionRow,
)
from orchestrator.db.templates import get_template, requirements
from orchestrator.runtime.graph_check import check_sandbox
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool


_DEFS: tuple[list[Any], sandbox.Definitions] | None = None  # the last merge, with the capabilities it came from


def sandbox_definitions(session: Session, pool: Pool | None) -> sandbox.Definitions:
    """What the pool's servers (live, or as recorded without a pool) know of their node classes' file inputs."""
    global _DEFS
    caps = [srv.caps for srv in pool.servers] if pool is not None else \
        [Capabilities.from_json(r.capabilities) for r in server_rows(session)]
    cached = _DEFS
    if cached is not None and len(cached[0]) == len(caps) and all(a is b for a, b in zip(cached[0], caps, strict=True)):
        return cached[1]
    defs = sandbox.Definitions.merge(caps)
    if pool is not None:
        _DEFS = (caps, defs)  # live capabilities are replaced, never changed, when a server is probed again
    return defs


def bound_inputs(t: tpl.TemplateVersion, which: Any) -> set[tuple[str, str]]:
    """(node id, input) of the parameters ``which(p)`` selects."""
    titles = nodes_by_title(t.graph)
    return {(titles[p.bind.node], p.bind.input) for p in t.manifest.parameters if which(p)}


def check_artifact_params(session: Session, t: tpl.TemplateVersion, values: dict[str, Any]) -> None:
    for p in t.manifest.parameters:
        if p.type not in tpl.ARTIFACT_TYPES or values.get(p.name) is None:
            continue
        art = session.get(Artifact, values[p.name])
        if art is None:
            raise InvalidInput(f"parameter {p.name}: unknown input artifact {values[p.name]!r}",
                               errors=[{"param": p.name, "message": "unknown artifact"}])
        if not art.content_type.startswith(f"{p.type.value}/"):
            raise InvalidInput(f"parameter {p.name}: artifact {art.id} is {art.content_type}, "
                               f"not an {p.type.value}", errors=[{"param": p.name, "message": "wrong type"}])


def validate_job(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
                 version: int | None = None, settings: Settings | None = None,
                 ) -> tuple[TemplateVersionRow, tpl.TemplateVersion, dict[str, Any]]:
    """Everything that can be known before dispatch; returns the template and the validated parameters.

    Refused here: unknown template or version, bad parameters, unknown or wrong-type input artifacts,
    and node classes or models that no server of the pool has (ComfyUI would only notice at run time),
    and LoRAs of the model registry that are not approved. Without a live ``pool`` (``medialab submit``)
    the servers' recorded capabilities are checked by the same rule, so every path refuses the same jobs.
    The graph bound with the caller's values must stay in the sandbox (a string parameter bound to a file
    input is how a caller would pick a path; URL values are checked by the URL rule).
    """
    caps = settings or get_settings()
    limits.check_name(template, "template name", caps.max_name_length)
    limits.check_params(params, caps)  # counts, lengths and numbers before pydantic sees them
    row, t = get_template(session, template, version)
    return row, t, validate_values(session, pool, t, params, settings)


def validate_values(session: Session, pool: Pool | None, t: tpl.TemplateVersion, params: dict[str, Any],
                    settings: Settings | None = None, defs: sandbox.Definitions | None = None,
                    checked: set[Hashable] | None = None) -> dict[str, Any]:
    """``validate_job``'s checks of parameters against a template already found: the validated values.

    A batch finds each of its templates once, passes the pool's ``defs`` once, and its ``checked`` (added to):
    what passed already, not checked again: the sandbox of a version with the same values but for its input
    artifacts (whose bound inputs the sandbox check skips), and requirements found usable and runnable."""
    from orchestrator.training.app.registry import check_usable

    values = tpl.validate_params(t, params)
    check_artifact_params(session, t, values)
    artifacts = {p.name for p in t.manifest.parameters if p.type in tpl.ARTIFACT_TYPES}
    shape = ("sandbox", t.content_hash, json.dumps({k: (v is not None) if k in artifacts else v
                                                     for k, v in values.items()}, sort_keys=True, default=str))
    if checked is None or shape not in checked:
        check_sandbox(tpl.bind(t, values), defs if defs is not None else sandbox_definitions(session, pool),
                      settings, skip=bound_inputs(t, lambda p: p.type in tpl.ARTIFACT_TYPES))
        if checked is not None:
            checked.add(shape)
    req = requirements(t, values)
    if checked is not None and req in checked:
        return values
    check_usable(session, req.models)  # a registered LoRA must be approved
    may_burst = BurstPolicy.of(settings or get_settings()).allowed(t.name, t.version)
    if pool is not None:
        pool.check_runnable(req, burst=may_burst)
    else:
        check_runnable_recorded(session, req, burst=may_burst)
    if checked is not None:
        checked.add(req)
    return values


def check_runnable_recorded(session: Session, req: Requirements, burst: bool = False) -> None:
    """``Pool.check_runnable`` against the recorded capabilities (for a process without a live pool). Nothing
    is refused while they are not known: no server registered (``serve`` and ``run`` start a local worker
    then), or an active server not probed yet (the live pool decides once it has probed it)."""
    from orchestrator.runtime.pool import MissingCapability

    views = [v for v in recorded_views(server_rows(session)) if burst or v.tier == 0]
    known = bool(views) and all(v.caps is not None for v in views if v.active)
    reason = unrunnable_reason(req, views) if known else None
    if reason:
        raise MissingCapability(reason)


def check_job_fields(priority: int, timeout_s: float | None, settings: Settings) -> None:
    """What every path that queues a job (API, CLI, trainings) checks besides the parameters."""
    low, high = limits.PRIORITY_RANGE
    if not isinstance(priority, int) or not low <= priority <= high:
        raise InvalidInput(f"priority {priority!r} is outside {low}..{high} (limits.PRIORITY_RANGE)",
                           limit="limits.PRIORITY_RANGE", value=high)
    limits.check_timeout(timeout_s, settings)
