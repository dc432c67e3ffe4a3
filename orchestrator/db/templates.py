"""Template version rows: read and turned into templates (never commits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlmodel import Session, select

from orchestrator.core import templates as tpl
from orchestrator.db.tables import (
    TemplateVersionRow,
)

if TYPE_CHECKING:
    pass


def template_from_row(row: TemplateVersionRow) -> tpl.TemplateVersion:
    return tpl.TemplateVersion(name=row.name, version=row.version, graph=row.graph,
                               manifest=tpl.Manifest.model_validate(row.manifest),
                               content_hash=row.content_hash, deprecated=row.deprecated)


def template_rows(session: Session, name: str | None = None) -> list[TemplateVersionRow]:
    q = select(TemplateVersionRow).order_by(TemplateVersionRow.name, TemplateVersionRow.version)
    if name:
        q = q.where(TemplateVersionRow.name == name)
    return list(session.exec(q))


def get_template(session: Session, name: str, version: int | None = None) -> tuple[TemplateVersionRow,
                                                                                      tpl.TemplateVersion]:
    rows = template_rows(session)
    t = tpl.pick([template_from_row(r) for r in rows], name, version)
    row = next(r for r in rows if r.name == t.name and r.version == t.version)
    return row, t
