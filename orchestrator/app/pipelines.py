"""Pipeline use cases: sync the library folder at start, check a definition, publish a version.

Versions are immutable, like templates: a ``(name, version)`` is recorded once with the content hash of its
definition (``core.pipelines.content_hash``) and never changes; publishing the same content under the same
version again is answered with the recorded row, other content under a recorded version is a Conflict (409).
Every definition is checked against the recorded template versions before it is stored.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from orchestrator.core import limits
from orchestrator.core import pipelines as pl
from orchestrator.core import templates as tpl
from orchestrator.core.errors import Conflict, InvalidInput
from orchestrator.db import audit
from orchestrator.db.pipelines import pipeline_row, pipeline_rows
from orchestrator.db.tables import PipelineVersionRow
from orchestrator.db.templates import template_from_row, template_rows
from orchestrator.settings import Settings, get_settings

log = logging.getLogger(__name__)


def step_templates(session: Session, p: pl.Pipeline) -> list[tpl.TemplateVersion]:
    """Every recorded version of every template the pipeline's steps name (``pl.check`` picks from them)."""
    found: list[tpl.TemplateVersion] = []
    for name in dict.fromkeys(s.template for s in p.steps):
        found.extend(template_from_row(r) for r in template_rows(session, name))
    return found


def check_pipeline(session: Session, p: pl.Pipeline) -> pl.CheckedPipeline:
    """The definition checked against the recorded templates; InvalidInput names every problem."""
    return pl.check(p, step_templates(session, p))


def _row(c: pl.CheckedPipeline, source: str, api_key_id: str | None = None) -> PipelineVersionRow:
    return PipelineVersionRow(name=c.pipeline.name, version=c.pipeline.version, content_hash=c.content_hash,
                              description=c.pipeline.description, definition=c.pipeline.body(),
                              step_order=c.order,
                              templates={k: v.model_dump() for k, v in c.templates.items()},
                              source=source, published_by=api_key_id)


def sync_pipelines(session: Session, pipelines: list[pl.Pipeline]) -> None:
    """Record every version found on disk, checked against the recorded templates (call after
    ``sync_templates``). A version whose content changed after it was recorded is refused, as is one that
    does not check; one naming a template the template library lacks (a deployment with a library of its
    own) is skipped with a warning."""
    for p in pipelines:
        row = pipeline_row(session, p.name, p.version)
        if row is not None:
            h = pl.content_hash(p)
            if row.content_hash == h:
                continue
            if row.source == "published":
                raise Conflict(f"comfy_pipelines/{p.name}/v{p.version} collides with a version published through "
                               "the API; give the folder the next free version number")
            raise Conflict(f"pipeline {p.ref} changed after it was recorded (recorded {row.content_hash[:12]}, "
                           f"on disk {h[:12]}); versions are immutable: add a new v<N> folder")
        templates = step_templates(session, p)
        missing = sorted({s.template for s in p.steps} - {t.name for t in templates})
        if missing:
            log.warning("pipeline %s skipped: the template library has no %s", p.ref, ", ".join(missing))
            continue
        session.add(_row(pl.check(p, templates, f"comfy_pipelines/{p.name}/v{p.version}"), "library"))
    session.commit()


def publish_pipeline(session: Session, name: str, definition: dict[str, Any], *, api_key_id: str | None = None,
                     settings: Settings | None = None) -> tuple[PipelineVersionRow, bool]:
    """Publish a version of pipeline ``name``: (row, created). The definition's ``version`` names the version
    (default: the next free one); its ``name``, when given, must be ``name``. The same content under a
    recorded version answers that row (created False); other content under it is a Conflict, as is content
    that some other version has already. The request is bounded first (names, strings, JSON values)."""
    st = settings or get_settings()
    limits.check_name(name, "pipeline name", st.max_name_length)
    limits.check_json(definition, "definition", max_string=limits.Limit.setting(st, "max_string_length"))
    if not isinstance(definition, dict):
        raise InvalidInput("a pipeline definition is a JSON object")
    if definition.get("name", name) != name:
        raise InvalidInput(f"the definition names pipeline {definition['name']!r}, the URL {name!r}",
                           errors=[{"param": "name", "message": f"must be {name!r} (or left out)"}])
    rows = pipeline_rows(session, name)
    version = definition.get("version") or max((r.version for r in rows), default=0) + 1
    p = pl.parse({**definition, "name": name, "version": version}, f"pipeline {name}@v{version}")
    c = check_pipeline(session, p)
    same = next((r for r in rows if r.version == p.version), None)
    if same is not None:
        if same.content_hash == c.content_hash:
            return same, False
        raise Conflict(f"{p.ref} exists with other content (recorded {same.content_hash[:12]}, this "
                       f"{c.content_hash[:12]}); versions are immutable: publish v{max(r.version for r in rows) + 1}")
    twin = next((r for r in rows if r.content_hash == c.content_hash), None)
    if twin is not None:
        raise Conflict(f"{name}@v{twin.version} has exactly this content already")
    row = _row(c, "published", api_key_id)
    session.add(row)
    audit.record(session, "pipeline.publish", p.ref, {"content_hash": c.content_hash})
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{p.ref} was published by someone else just now; publish again") from exc
    return row, True
