"""Operations on the database shared by the API, the CLI and the dispatcher."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError
from sqlalchemy import update
from sqlmodel import Session, col, select

from orchestrator import templates as tpl
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.jobs import JobState, check_transition
from orchestrator.models import Artifact, Attempt, Job, JobEvent, TemplateVersionRow, now
from orchestrator.pool import Pool
from storage import ObjectStore


# -- templates -------------------------------------------------------------------------------------
def sync_templates(session: Session, versions: list[tpl.TemplateVersion]) -> None:
    """Record every version found on disk; a published version whose content changed is refused."""
    for t in versions:
        row = session.exec(select(TemplateVersionRow).where(
            TemplateVersionRow.name == t.name, TemplateVersionRow.version == t.version)).first()
        if row is None:
            session.add(TemplateVersionRow(
                name=t.name, version=t.version, content_hash=t.content_hash, title=t.manifest.title,
                kind=t.manifest.kind, manifest=t.manifest.model_dump(mode="json"), graph=t.graph))
        elif row.content_hash != t.content_hash:
            raise Conflict(f"template {t.ref} changed after it was published (recorded {row.content_hash[:12]}, "
                           f"on disk {t.content_hash[:12]}); versions are immutable: add a new v<N> folder")
    session.commit()


def template_from_row(row: TemplateVersionRow) -> tpl.TemplateVersion:
    return tpl.TemplateVersion(name=row.name, version=row.version, graph=row.graph,
                               manifest=tpl.Manifest.model_validate(row.manifest),
                               content_hash=row.content_hash)


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


# -- artifacts -------------------------------------------------------------------------------------
def sniff(f: BinaryIO, filename: str) -> tuple[str, int | None, int | None]:
    """(content type, width, height): images by decoding them, anything else by its name."""
    try:
        with Image.open(f) as im:
            fmt, (w, h) = im.format or "octet-stream", im.size
            im.verify()
        return f"image/{fmt.lower()}", w, h
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if guessed.startswith("image/"):  # a name is no proof: only bytes that decode are an image
        return "application/octet-stream", None, None
    return guessed, None, None


def store_input(session: Session, store: ObjectStore, data: bytes | Iterable[bytes] | Path,
                filename: str) -> Artifact:
    """Store an uploaded input; the same bytes uploaded twice give the same artifact."""
    if isinstance(data, Path):
        obj = store.put_file(data)
    else:
        obj = store.put_stream([data] if isinstance(data, bytes) else data)
    existing = session.exec(select(Artifact).where(Artifact.origin == f"input:{obj.sha256}")).first()
    if existing:
        return existing
    with store.open(obj.key) as f:
        content_type, w, h = sniff(f, filename)
    art = Artifact(origin=f"input:{obj.sha256}", key=obj.key, sha256=obj.sha256, size=obj.size,
                   content_type=content_type, filename=Path(filename).name or "upload", role="input",
                   width=w, height=h)
    session.add(art)
    session.commit()
    return art


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    art = session.get(Artifact, artifact_id)
    if art is None:
        raise NotFound(f"unknown artifact {artifact_id}")
    return art


def job_outputs(session: Session, job_id: str) -> list[Artifact]:
    return list(session.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.role == "output")
                             .order_by(Artifact.output_name, Artifact.filename)))


# -- jobs ------------------------------------------------------------------------------------------
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


def required_models(t: tpl.TemplateVersion, values: dict[str, Any]) -> set[tuple[str, str]]:
    refs = tpl.model_refs(tpl.bind(t, values))
    refs |= {(p.folder, values[p.name]) for p in t.manifest.parameters
             if p.type == tpl.ParamType.model and p.folder and values.get(p.name)}
    return refs


def create_job(session: Session, row: TemplateVersionRow, t: tpl.TemplateVersion, values: dict[str, Any],
               *, api_key_id: str | None = None, priority: int = 0, timeout_s: float | None = None) -> Job:
    """Write the job (QUEUED) and its first event; params must be validated already."""
    job = Job(template_version_id=row.id, template=t.name, version=t.version, params=values,
              priority=priority, timeout_s=timeout_s or t.manifest.timeout_s, api_key_id=api_key_id)
    session.add(job)
    session.add(JobEvent(job_id=job.id, kind="state", state=JobState.QUEUED, reason="submitted",
                         data={"template": t.ref, "hash": t.content_hash}))
    session.commit()
    return job


def submit_job(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
               version: int | None = None, **job_fields: Any) -> Job:
    """Validate everything that can be known before dispatch, then write the job as QUEUED.

    Refused here: unknown template or version, bad parameters, unknown or wrong-type input artifacts,
    and models that no server in the pool has (ComfyUI itself would only notice at run time).
    """
    row, t = get_template(session, template, version)
    values = tpl.validate_params(t, params)
    check_artifact_params(session, t, values)
    if pool is not None:
        pool.check_runnable(required_models(t, values))
    return create_job(session, row, t, values, **job_fields)


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id}")
    return job


def list_jobs(session: Session, state: JobState | None = None, template: str | None = None,
              limit: int = 50, offset: int = 0) -> list[Job]:
    q = select(Job).order_by(col(Job.created_at).desc()).limit(limit).offset(offset)
    if state:
        q = q.where(Job.state == state)
    if template:
        q = q.where(Job.template == template)
    return list(session.exec(q))


def transition(session: Session, job_id: str, current: JobState, new: JobState, reason: str,
               data: dict[str, Any] | None = None, **fields: Any) -> bool:
    """Move a job from ``current`` to ``new`` if nobody else moved it first; commits with its event.

    The conditional UPDATE makes this safe between threads and between orchestrator replicas.
    """
    check_transition(current, new)
    values: dict[str, Any] = {"state": new, **fields}
    if new == JobState.RUNNING:
        values.setdefault("started_at", now())
    if new.terminal:
        values.setdefault("finished_at", now())
    res = session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == current).values(**values))
    if res.rowcount != 1:
        session.rollback()
        return False
    session.add(JobEvent(job_id=job_id, kind="state", state=new, reason=reason, data=data))
    session.commit()
    return True


def add_event(session: Session, job_id: str, kind: str, reason: str = "", data: dict[str, Any] | None = None,
              **job_fields: Any) -> None:
    if job_fields:
        session.execute(update(Job).where(col(Job.id) == job_id).values(**job_fields))
    session.add(JobEvent(job_id=job_id, kind=kind, reason=reason, data=data))
    session.commit()


def cancel_job(session: Session, job_id: str) -> Job:
    """QUEUED -> CANCELLED at once; a RUNNING job is flagged and its dispatcher interrupts it by prompt_id."""
    job = get_job(session, job_id)
    if job.state.terminal:
        raise Conflict(f"job {job_id} is already {job.state.value}")
    if not (job.state == JobState.QUEUED
            and transition(session, job_id, JobState.QUEUED, JobState.CANCELLED, "cancelled while queued")):
        add_event(session, job_id, "info", "cancel requested", cancel_requested=True)
    session.expire_all()
    return get_job(session, job_id)


def job_attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))


def events_after(session: Session, job_id: str, after_id: int = 0) -> list[JobEvent]:
    return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id, col(JobEvent.id) > after_id)
                             .order_by(col(JobEvent.id))))


def claim_next(session: Session) -> Job | None:
    """Claim the next QUEUED job (highest priority, then oldest) for this dispatcher, or None."""
    for _ in range(5):
        job = session.exec(select(Job).where(Job.state == JobState.QUEUED)
                           .order_by(col(Job.priority).desc(), col(Job.created_at)).limit(1)).first()
        if job is None:
            return None
        if transition(session, job.id, JobState.QUEUED, JobState.RUNNING, "dispatched"):
            session.expire_all()
            return get_job(session, job.id)
    return None
