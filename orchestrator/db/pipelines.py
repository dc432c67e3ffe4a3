"""Pipeline version rows: read and turned into checked pipelines (never commits).

A row holds what ``core.pipelines.check`` made of the definition when it was recorded (the topological order,
the pinned template versions), so reading one needs no template: versions of both are immutable."""

from __future__ import annotations

from sqlmodel import Session, select

from orchestrator.core import pipelines as pl
from orchestrator.core.errors import NotFound
from orchestrator.core.templates import did_you_mean, pick_version
from orchestrator.db.tables import PipelineVersionRow


def pipeline_rows(session: Session, name: str | None = None) -> list[PipelineVersionRow]:
    q = select(PipelineVersionRow).order_by(PipelineVersionRow.name, PipelineVersionRow.version)
    if name:
        q = q.where(PipelineVersionRow.name == name)
    return list(session.exec(q))


def pipeline_row(session: Session, name: str, version: int) -> PipelineVersionRow | None:
    return session.exec(select(PipelineVersionRow).where(PipelineVersionRow.name == name,
                                                         PipelineVersionRow.version == version)).first()


def get_pipeline(session: Session, name: str, version: int | None = None) -> PipelineVersionRow:
    """The named version, or the newest one that is not deprecated; NotFound names what exists."""
    rows = pipeline_rows(session, name)
    if not rows:
        names = sorted(set(session.exec(select(PipelineVersionRow.name).distinct())))
        raise NotFound(f"unknown pipeline '{name}'{did_you_mean(name, names)} (known: {', '.join(names) or 'none'})")
    return pick_version(rows, f"pipeline '{name}'", version)


def checked_from_row(row: PipelineVersionRow) -> pl.CheckedPipeline:
    """The row as the checked pipeline it was recorded from (what a run starts from)."""
    return pl.CheckedPipeline(pipeline=pl.Pipeline.model_validate(
                                  {**row.definition, "name": row.name, "version": row.version}),
                              content_hash=row.content_hash, order=list(row.step_order),
                              templates={k: pl.TemplatePin.model_validate(v) for k, v in row.templates.items()})
