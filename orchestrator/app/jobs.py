"""Job use cases: submit, cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from orchestrator.app.admission import check_job_fields, validate_job
from orchestrator.core import templates as tpl
from orchestrator.core.errors import Conflict
from orchestrator.core.states import JobState
from orchestrator.db import audit
from orchestrator.db.jobs import add_event, get_job, idempotent_job, transition, write_new
from orchestrator.db.tables import (
    Job,
    JobEvent,
    JobInput,
    TemplateVersionRow,
)
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool


def create_job(session: Session, row: TemplateVersionRow, t: tpl.TemplateVersion, values: dict[str, Any],
               *, api_key_id: str | None = None, priority: int = 0, timeout_s: float | None = None,
               idempotency_key: str | None = None, request_hash: str | None = None) -> Job:
    """Write the job (QUEUED) and its first event; params must be validated already. On PostgreSQL the job,
    its inputs, its event and its audit row go in one round trip (``write_new``), then the commit."""
    job = Job(template_version_id=row.id, template=t.name, version=t.version, params=values,
              priority=priority, timeout_s=timeout_s or t.manifest.timeout_s, api_key_id=api_key_id,
              idempotency_key=idempotency_key, request_hash=request_hash)
    rows: list[SQLModel] = [job]
    rows.extend(JobInput(job_id=job.id, artifact_id=values[p.name]) for p in t.manifest.parameters
                if p.type in tpl.ARTIFACT_TYPES and values.get(p.name))
    rows.append(JobEvent(job_id=job.id, kind="state", state=JobState.QUEUED, reason="submitted",
                         data={"template": t.ref, "hash": t.content_hash}))
    entry = audit.record(session, "job.submit", job.id, {"kind": job.kind, "template": t.ref, "priority": priority})
    session.expunge(entry)  # written with the rest
    rows.append(entry)
    write_new(session, rows)
    session.commit()
    return job


def submit_job(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
               version: int | None = None, settings: Settings | None = None, **job_fields: Any) -> Job:
    """Validate, then write the job as QUEUED (a job is always written before it is dispatched). With an
    ``idempotency_key`` (and the ``request_hash`` of the body), a repeated submit returns the first job."""
    return submit(session, pool, template, params, version, settings, **job_fields)[0]


def submit(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
           version: int | None = None, settings: Settings | None = None, **job_fields: Any) -> tuple[Job, bool]:
    """``submit_job``, and whether this call wrote the job (False: an earlier submit with the same
    ``idempotency_key`` did, and the job may have run since)."""
    check_job_fields(job_fields.get("priority", 0), job_fields.get("timeout_s"), settings or get_settings())
    if job_fields.get("idempotency_key"):
        job = idempotent_job(session, job_fields.get("api_key_id"), job_fields["idempotency_key"],
                             job_fields["request_hash"])
        if job is not None:
            return job, False
    row, t, values = validate_job(session, pool, template, params, version, settings)
    try:
        return create_job(session, row, t, values, **job_fields), True
    except IntegrityError:
        session.rollback()
        job = idempotent_job(session, job_fields.get("api_key_id"), job_fields.get("idempotency_key") or "",
                             job_fields.get("request_hash") or "") if job_fields.get("idempotency_key") else None
        if job is None:
            raise
        return job, False  # a concurrent submit with the same Idempotency-Key won


def cancel_job(session: Session, job_id: str) -> Job:
    """QUEUED -> CANCELLED at once; a RUNNING job is flagged and its dispatcher interrupts it by prompt_id."""
    job = get_job(session, job_id)
    job_id = job.id  # the full id (a prefix was given, maybe)
    if job.state.terminal:
        raise Conflict(f"job {job_id} is already {job.state.value}")
    cancelled = job.state == JobState.QUEUED and transition(session, job_id, JobState.QUEUED, JobState.CANCELLED,
                                                            "cancelled while queued")
    audit.record(session, "job.cancel", job_id, {"kind": job.kind, "outcome": "cancelled" if cancelled
                                                 else "cancel requested"})
    if not cancelled:  # running (or taken by a dispatcher just now): its dispatcher or trainer stops it
        add_event(session, job_id, "info", "cancel requested", cancel_requested=True)
    session.commit()
    session.expire_all()
    return get_job(session, job_id)
