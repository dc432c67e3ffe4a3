from typing import Any

from fastapi import APIRouter

from orchestrator.api.deps import AnyKey, CtxDep, PublishKey, SessionDep
from orchestrator.api.schemas import TemplateDiff, TemplateOut, TemplatePreview, TemplatePublish, TemplateVersionOut
from orchestrator.app import templates as template_app
from orchestrator.core import templates as tpl
from orchestrator.core.errors import NotFound
from orchestrator.db import templates as template_db
from orchestrator.db.tables import TemplateVersionRow

router = APIRouter(prefix="/templates", tags=["templates"])


def version_out(row: TemplateVersionRow, full: bool = False) -> TemplateVersionOut:
    out = TemplateVersionOut(name=row.name, version=row.version, title=row.title,
                             description=row.manifest.get("description", ""), kind=row.kind,
                             content_hash=row.content_hash, created_at=row.created_at, source=row.source,
                             deprecated=row.deprecated)
    if full:
        out.params_schema = template_db.template_from_row(row).params_schema()
        out.manifest, out.graph = row.manifest, row.graph
    return out


@router.get("", response_model=list[TemplateOut])
def list_templates(session: SessionDep, _: AnyKey) -> list[TemplateOut]:
    by_name: dict[str, list[TemplateVersionRow]] = {}
    for row in template_db.template_rows(session):
        by_name.setdefault(row.name, []).append(row)
    return [TemplateOut(name=name, latest=version_out(next((r for r in reversed(rows) if not r.deprecated), rows[-1])),
                        versions=[r.version for r in rows])
            for name, rows in by_name.items()]


@router.get("/{name}", response_model=TemplateVersionOut)
def get_latest(name: str, session: SessionDep, _: AnyKey) -> TemplateVersionOut:
    """The newest version, with its parameter schema."""
    row, _t = template_db.get_template(session, name)
    return version_out(row, full=True)


@router.get("/{name}/versions/{version}", response_model=TemplateVersionOut)
def get_version(name: str, version: int, session: SessionDep, _: AnyKey) -> TemplateVersionOut:
    if version < 1:
        raise NotFound(f"template '{name}' has no version {version}")
    row, _t = template_db.get_template(session, name, version)
    return version_out(row, full=True)


@router.get("/{name}/versions/{version}/workflow")
def get_workflow(name: str, version: int, ctx: CtxDep, session: SessionDep, _: AnyKey) -> dict[str, Any]:
    """The version as an editor-format workflow (open it in ComfyUI: Workflow > Open), laid out with the node
    definitions of a live pool server."""
    if version < 1:
        raise NotFound(f"template '{name}' has no version {version}")
    return template_app.template_workflow(session, name, version, ctx.start_pool().object_info())


@router.post("/{name}/versions", status_code=201, response_model=TemplateVersionOut)
def publish(name: str, body: TemplatePublish, ctx: CtxDep, session: SessionDep, key: PublishKey) -> TemplateVersionOut:
    """Publish the next version from an API-format graph or an editor-format workflow (converted and checked
    with a live pool server)."""
    row = template_app.publish_template(session, ctx.pool, name, body.graph, body.manifest, title=body.title,
                                   kind=body.kind, description=body.description, api_key_id=key.id,
                                   settings=ctx.settings)
    return version_out(row, full=True)


@router.post("/{name}/preview", response_model=TemplatePreview)
def preview(name: str, body: TemplatePublish, ctx: CtxDep, session: SessionDep, _: PublishKey) -> TemplatePreview:
    """Every check of a publish, storing nothing: the version it would be, its manifest for review, and the diff
    against the version the workflow was opened from (errors as a publish's: 422 with ``nodes`` naming the node
    of each problem that has one)."""
    found = template_app.preview_template(session, ctx.pool, name, body.graph, body.manifest, title=body.title,
                                          kind=body.kind, description=body.description, settings=ctx.settings)
    t, diff = found.template, found.diff or {}
    return TemplatePreview(name=t.name, version=t.version, title=t.manifest.title, description=t.manifest.description,
                           kind=t.manifest.kind, content_hash=t.content_hash, manifest=found.manifest,
                           params_schema=t.params_schema(), graph=t.graph,
                           base_version=found.base.version if found.base else None,
                           fields=diff.get("fields"), parameters=TemplateDiff(**diff["parameters"]) if diff else None,
                           nodes=TemplateDiff(**diff["nodes"]) if diff else None)


@router.post("/{name}/versions/{version}/deprecate", response_model=TemplateVersionOut)
def deprecate(name: str, version: int, session: SessionDep, _: PublishKey, undo: bool = False) -> TemplateVersionOut:
    """Jobs that name no version stop taking this one (``undo=true`` brings it back)."""
    return version_out(template_app.set_deprecated(session, name, version, not undo), full=True)


@router.get("/{name}/diff")
def diff(name: str, a: int, b: int, session: SessionDep, _: AnyKey) -> dict:
    """Parameters and nodes added, removed and changed from version a to version b."""
    _ra, ta = template_db.get_template(session, name, a)
    _rb, tb = template_db.get_template(session, name, b)
    return tpl.diff(ta, tb)
