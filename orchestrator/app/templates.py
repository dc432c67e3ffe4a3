"""Template use cases: sync the library, publish, open in the editor, deprecate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from orchestrator.app.admission import bound_inputs, sandbox_definitions
from orchestrator.core import editor, limits, sandbox
from orchestrator.core import templates as tpl
from orchestrator.core.errors import Conflict, InvalidInput
from orchestrator.core.graph import node_errors
from orchestrator.core.requirements import requirements
from orchestrator.core.validation import validate_graph
from orchestrator.db import audit
from orchestrator.db.tables import (
    TemplateVersionRow,
)
from orchestrator.db.templates import get_template, template_from_row, template_rows
from orchestrator.runtime.graph_check import check_sandbox
from orchestrator.runtime.pool import MissingCapability
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool


def sync_templates(session: Session, versions: list[tpl.TemplateVersion]) -> None:
    """Record every version found on disk; a published version whose content changed is refused."""
    for t in versions:
        row = session.exec(select(TemplateVersionRow).where(
            TemplateVersionRow.name == t.name, TemplateVersionRow.version == t.version)).first()
        if row is None:
            session.add(TemplateVersionRow(
                name=t.name, version=t.version, content_hash=t.content_hash, title=t.manifest.title,
                kind=t.manifest.kind, manifest=t.manifest.model_dump(mode="json"), graph=t.graph,
                source="library"))
        elif row.content_hash != t.content_hash and row.source == "published":
            raise Conflict(f"comfy_workflows/{t.name}/v{t.version} collides with a version published through the "
                           "API; give the folder the next free version number")
        elif row.content_hash != t.content_hash:
            raise Conflict(f"template {t.ref} changed after it was published (recorded {row.content_hash[:12]}, "
                           f"on disk {t.content_hash[:12]}); versions are immutable: add a new v<N> folder")
    session.commit()


def check_publish(name: str, graph: dict[str, Any], manifest: dict[str, Any] | None, title: str | None,
                  description: str, settings: Settings) -> None:
    """A publish request within the limits: the name and title are names (``max_name_length``), the
    description a string (``max_string_length``); graph and manifest hold only finite numbers, 64-bit
    integers and strings without NUL (their size is bounded by ``max_body_bytes``)."""
    limits.check_name(name, "template name", settings.max_name_length)
    if title is not None:
        limits.check_name(title, "title", settings.max_name_length)
    limits.check_json(description, "description", max_string=limits.Limit.setting(settings, "max_string_length"))
    limits.check_json(graph, "graph")
    limits.check_json(manifest, "manifest")


@dataclass(frozen=True)
class Preview:
    """What a publish would store: the version (number, manifest, titled graph) and what changed from ``base``,
    the version the workflow was opened from (else the newest of the name; None for a new template)."""

    template: tpl.TemplateVersion
    manifest: dict[str, Any]  # as it will be stored (the content hash is of this dict)
    base: tpl.TemplateVersion | None
    diff: dict[str, Any] | None


def preview_template(session: Session, pool: Pool | None, name: str, graph: dict[str, Any],
                     manifest: dict[str, Any] | None = None, *, title: str | None = None, kind: str | None = None,
                     description: str = "", settings: Settings | None = None, with_diff: bool = True) -> Preview:
    """Every check of a publish (``publish_template``), storing nothing: the version it would be, its manifest
    (read from the parameter nodes) for review, and the diff against the version it was opened from.

    An editor-format workflow (what ComfyUI's Save writes) is converted to the API format with the node
    definitions of a live pool server. Without a manifest, parameters come from the node pack's parameter
    nodes and outputs from the save nodes; a workflow that ``templates open`` (or the editor's Media Lab panel)
    opened keeps the manifest of the version it came from, merged with any parameter nodes added since
    (``tpl.merge_manifest``; bindings are by title), with the title, kind and description given, else its own
    (a new template's kind is image unless given). The graph is checked against the node definitions of a
    live pool server, and every node class and model it needs must exist on some server. Before any of that,
    the graph with its defaults bound must stay in the sandbox (``sandbox.check_graph``: no file input leaving
    ComfyUI's folders, no URL the URL rule refuses). First of all, the request is bounded (``check_publish``).
    A problem that concerns a node is also listed under ``nodes`` of the error (id, input, message). Without
    ``with_diff`` (a publish), no base is read and no diff made."""
    check_publish(name, graph, manifest, title, description, settings or get_settings())
    object_info, origin = None, None
    if editor.is_editor_format(graph):
        medialab = (graph.get("extra") or {}).get("medialab") or {}
        origin = (medialab.get("template"), medialab.get("version")) if medialab.get("template") else None
        if pool is None:
            raise InvalidInput("an editor-format workflow needs a live ComfyUI server's node definitions to be "
                               "converted; publish with a pool, or export the API format (Workflow > Export (API))")
        object_info = pool.object_info()
        graph = editor.to_api(graph, object_info)
    if manifest is None:
        derived, graph = tpl.manifest_from_graph(graph, title or name, kind or "image", description)
        manifest = derived
        if origin:
            source, _t = get_template(session, *origin)
            given = {"title": title, "kind": kind, "description": description}
            manifest = tpl.merge_manifest({**source.manifest, **{k: v for k, v in given.items() if v}}, derived, graph)
    rows = template_rows(session, name)
    version = max((r.version for r in rows), default=0) + 1
    t = tpl.from_dicts(name, version, manifest, graph)
    same = next((r for r in rows if r.content_hash == t.content_hash), None)
    if same:
        raise Conflict(f"{name}@v{same.version} has exactly this content already")
    values = {p.name: p.default if p.default is not None else f"sha256/00/{p.name}" for p in t.manifest.parameters}
    if pool is not None and object_info is None:
        object_info = pool.object_info()
    defs = sandbox.Definitions.from_object_info(object_info) if object_info is not None \
        else sandbox_definitions(session, None)
    bound = tpl.bind(t, values)  # a copy; the checks below only read it
    check_sandbox(bound, defs, settings, skip=bound_inputs(t, lambda p: p.type in tpl.ARTIFACT_TYPES
                                                           or p.default is None))
    if pool is not None:
        problems = validate_graph(bound, object_info)
        if problems:
            raise InvalidInput(f"{t.ref} does not validate against the pool's node definitions: "
                               + "; ".join(problems), problems=problems, nodes=node_errors(problems))
        needs = requirements(t, values)
        try:
            pool.check_runnable(needs)
        except MissingCapability as exc:  # the loaders (or model parameters) that name a model no server has
            exc.extra["nodes"] = node_errors(tpl.model_problems(bound, pool.absent_models(needs)))
            raise
    base_row = next((r for r in rows if origin and origin == (name, r.version)), rows[-1] if rows else None)
    base = template_from_row(base_row) if base_row is not None and with_diff else None
    return Preview(template=t, manifest=manifest, base=base, diff=tpl.diff(base, t) if base is not None else None)


def publish_template(session: Session, pool: Pool | None, name: str, graph: dict[str, Any],
                     manifest: dict[str, Any] | None = None, *, title: str | None = None, kind: str | None = None,
                     description: str = "", api_key_id: str | None = None,
                     settings: Settings | None = None) -> TemplateVersionRow:
    """Publish the next version of a template from an API-format graph or an editor-format workflow, after
    every check of ``preview_template``. A published version is immutable."""
    preview = preview_template(session, pool, name, graph, manifest, title=title, kind=kind,
                               description=description, settings=settings, with_diff=False)
    t = preview.template
    row = TemplateVersionRow(name=name, version=t.version, content_hash=t.content_hash, title=t.manifest.title,
                             kind=t.manifest.kind, manifest=preview.manifest, graph=t.graph,
                             source="published", published_by=api_key_id)
    session.add(row)
    audit.record(session, "template.publish", f"{name}@v{t.version}", {"content_hash": t.content_hash})
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{name}@v{t.version} was published by someone else just now; publish again") from exc
    return row


def template_workflow(session: Session, name: str, version: int | None, object_info: dict[str, Any]) -> dict[str, Any]:
    """A version's graph as an editor-format workflow, to open (Workflow > Open) and edit in ComfyUI."""
    _row, t = get_template(session, name, version)
    defaults = {p.name: p.default for p in t.manifest.parameters if p.default is not None}
    workflow = editor.to_editor(tpl.bind(t, defaults), object_info)  # the artist sees the defaults
    workflow["extra"].setdefault("medialab", {}).update({"template": t.name, "version": t.version,
                                                          "content_hash": t.content_hash})
    return workflow


def set_deprecated(session: Session, name: str, version: int, deprecated: bool = True) -> TemplateVersionRow:
    """A deprecated version still runs when named, but is no longer the default."""
    row, _t = get_template(session, name, version)
    row.deprecated = deprecated
    session.add(row)
    audit.record(session, "template.deprecate", f"{name}@v{version}", {"deprecated": deprecated})
    session.commit()
    return row
