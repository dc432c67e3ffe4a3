"""Batch use cases: create (every item validated, then one transaction), cancel, retry the failed items.

Each use case ends in one commit. A batch's jobs are ordinary jobs (QUEUED, dispatched by the dispatcher) with
``batch_id`` and ``batch_item`` set and the caller's key, so fair share (``core.placement.fair_order``) counts
them as the caller's: one huge batch of a key does not starve another key's single job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, col, select

from orchestrator.app import frames as frame_app
from orchestrator.app import pipeline_runs as run_app
from orchestrator.app.admission import check_job_fields, sandbox_definitions, validate_values
from orchestrator.core import batches as rules
from orchestrator.core import frames as frames_rules
from orchestrator.core import limits
from orchestrator.core import requirements as reqs
from orchestrator.core import templates as tpl
from orchestrator.core.errors import Conflict, InvalidInput, MediaLabError
from orchestrator.core.pipeline_runs import RunState
from orchestrator.core.states import JobState
from orchestrator.db import audit
from orchestrator.db import batches as batch_db
from orchestrator.db import pipeline_runs as run_db
from orchestrator.db.pipelines import checked_from_row, get_pipeline
from orchestrator.db.tables import Artifact, Batch, Job, JobEvent, JobInput, TemplateVersionRow, new_id, now
from orchestrator.db.templates import get_template
from orchestrator.settings import Settings, get_settings
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool

MAX_LISTED_ERRORS = 200  # bad items named in one refusal (the message gives the count of all)
IN_CHUNK = 500  # ids per IN (...) query (SQLite's bound-parameter limit)


@dataclass
class Created:
    """A new batch, and the items not created again because a job with their key exists (item -> job id).

    ``written`` False: nothing was written. A dry run (``batch`` None); every item skipped (``batch``: the
    batch all their jobs belong to, None when they are not all of one); or a repeated ``Idempotency-Key``
    (``batch``: the one the first request made, ``replayed``)."""

    batch: Batch | None
    skipped: dict[int, str] = field(default_factory=dict)
    planned: list[rules.Item] = field(default_factory=list)  # a dry run: the items it would queue
    written: bool = True
    dry_run: bool = False
    replayed: bool = False


def item_hash(item: rules.Item) -> str:
    """The request hash of one item (its idempotency key's body)."""
    body = {"template": item.template, "version": item.version, "params": item.params}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), IN_CHUNK):
        yield values[i:i + IN_CHUNK]


def _prefetch_artifacts(session: Session, items: Sequence[rules.Item]) -> list[Artifact]:
    """Load every string parameter value that may name an artifact in a few queries, so the per-item check
    (``session.get``) finds them in the session instead of asking the database once per item. The caller
    holds on to the list while it validates (the session keeps its objects only while they are referenced)."""
    ids = sorted({v for it in items for v in it.params.values() if isinstance(v, str) and len(v) == 32})
    return [a for chunk in _chunks(ids) for a in session.exec(select(Artifact).where(col(Artifact.id).in_(chunk)))]


def _existing_keys(session: Session, api_key_id: str | None, keys: Sequence[str]) -> dict[str, Job]:
    found: dict[str, Job] = {}
    for chunk in _chunks(keys):
        for job in session.exec(select(Job).where(Job.api_key_id == api_key_id, col(Job.idempotency_key).in_(chunk))):
            found[job.idempotency_key or ""] = job
    return found


def _validated(session: Session, pool: Pool | None, t: tpl.TemplateVersion, params: dict[str, Any], cfg: Settings,
               defs: Any, checked: set[Hashable], arts: dict[str, Artifact],
               memo: dict[Hashable, dict[str, Any]]) -> dict[str, Any]:
    """``validate_values`` of one item, done once per version and *shape*: the item's values with each input
    artifact that exists named by its content type only. Two items of one shape differ only in which existing
    artifact of the same type they name, and nothing ``validate_values`` checks tells those apart: the
    parameter model takes any string for an artifact (strict ``str``), the artifact check asks existence and
    type, the sandbox shape and the requirements ignore the artifact's id (an artifact parameter whose value
    counts for the requirements is kept in the shape). Any other item (an unknown artifact, a non-string, a
    value not seen before) goes through ``validate_values`` itself, which raises naming what is wrong."""
    shape = _shape(t, params, arts)
    if shape is None:
        return validate_values(session, pool, t, params, cfg, defs, checked)
    found = memo.get(shape)
    if found is None:
        found = memo[shape] = validate_values(session, pool, t, params, cfg, defs, checked)
    return found | {k: params[k] for k in _artifact_params(t) if k in params}


_ARTIFACT_PARAMS: dict[str, frozenset[str]] = {}  # content hash -> artifact parameters not counting for requirements


def _artifact_params(t: tpl.TemplateVersion) -> frozenset[str]:
    found = _ARTIFACT_PARAMS.get(t.content_hash)
    if found is None:
        if len(_ARTIFACT_PARAMS) >= 1024:
            _ARTIFACT_PARAMS.clear()
        counting = reqs.values_that_count(t)
        found = _ARTIFACT_PARAMS[t.content_hash] = frozenset(
            p.name for p in t.manifest.parameters if p.type in tpl.ARTIFACT_TYPES and p.name not in counting)
    return found


_PLAIN = (str, int, bool, type(None))  # value types told apart (as pydantic does) by their type and equality


def _shape(t: tpl.TemplateVersion, params: dict[str, Any], arts: dict[str, Artifact]) -> Hashable | None:
    """The memo key of ``_validated`` (None: validate this item on its own): each value with its exact type
    (``True``, ``1`` and ``1.0`` are equal in Python, not to the parameter model), a float by its ``repr``
    (``-0.0`` is not ``0.0``), an existing artifact by its content type. A tuple, not JSON text: no encoding
    per item."""
    names = _artifact_params(t)
    abstract: list[tuple[str, Any, Any]] = []
    for k, v in params.items():
        if type(k) is not str:
            return None
        kind = type(v)
        if k in names:
            art = arts.get(v) if kind is str else None
            if art is None:
                return None
            abstract.append((k, Artifact, art.content_type))
        elif kind is float:
            abstract.append((k, float, repr(v)))
        elif kind in _PLAIN:
            abstract.append((k, kind, v))
        else:
            return None
    abstract.sort(key=lambda e: e[0])
    return (t.name, t.version, t.content_hash, tuple(abstract))


def _item_errors(index: int, exc: MediaLabError) -> list[dict[str, Any]]:
    errors = exc.extra.get("errors") or [{"param": None, "message": exc.message}]
    return [{"item": index, "param": e.get("param"), "message": e.get("message") or exc.message} for e in errors]


def create_batch(session: Session, pool: Pool | None, items: Sequence[rules.Item], *,
                 api_key_id: str | None = None, label: str | None = None, priority: int = 0,
                 timeout_s: float | None = None, keys: Sequence[str | None] | None = None,
                 request: dict[str, Any] | None = None, settings: Settings | None = None,
                 dry_run: bool = False, idempotency_key: str | None = None,
                 request_hash: str | None = None) -> Created:
    """Validate every item (``validate_job``'s checks; each template found and parsed once), refuse the whole
    batch with one 422 naming every bad item (``errors``: item, param, message), else write the batch and all
    its jobs QUEUED in one transaction. ``dry_run``: the same validation, nothing written (``Created.batch``
    None, ``planned`` the items it would queue).

    ``keys``: an optional idempotency key per item (None: none). An item whose key this caller already used
    is not created again: ``Created.skipped`` names its job (the same key with other parameters is a bad
    item), so running the same batch again submits only what is not there yet; when every item is skipped
    nothing is written (``Created.batch``: the batch of those jobs, if they are all of one).

    ``idempotency_key``: the whole batch's key (with the ``request_hash`` of its body): the same key again
    answers the batch the first request made (``replayed``), the same key with another body is refused."""
    cfg = settings or get_settings()
    check_job_fields(priority, timeout_s, cfg)
    limits.check_count(len(items), "items in the batch", "max_batch_items", cfg.max_batch_items)
    if not items:
        raise InvalidInput("a batch needs at least one item", errors=[{"param": "items", "message": "empty"}])
    if label is not None:
        limits.check_name(label, "batch label", cfg.max_name_length)
    keys = list(keys) if keys is not None else [None] * len(items)
    if len(keys) != len(items):
        raise InvalidInput(f"{len(keys)} keys for {len(items)} items")
    if idempotency_key is not None and not dry_run:
        limits.check_name(idempotency_key, "Idempotency-Key", limits.MAX_QUERY_LENGTH, "limits.MAX_QUERY_LENGTH")
        old_batch = batch_db.idempotent_batch(session, api_key_id, idempotency_key, request_hash)
        if old_batch is not None:
            return Created(old_batch, written=False, replayed=True)
    errors: list[dict[str, Any]] = []
    templates: dict[tuple[str, int | None], tuple[TemplateVersionRow, tpl.TemplateVersion] | MediaLabError] = {}
    existing = _existing_keys(session, api_key_id, sorted({k for k in keys if k}))
    loaded = _prefetch_artifacts(session, items)
    arts = {a.id: a for a in loaded}
    memo: dict[Hashable, dict[str, Any]] = {}
    defs = sandbox_definitions(session, pool)
    checked: set[Hashable] = set()
    valid: list[tuple[rules.Item, str | None, TemplateVersionRow, tpl.TemplateVersion, dict[str, Any]]] = []
    skipped: dict[int, str] = {}
    seen_keys: set[str] = set()
    first = ""  # the first bad item's whole message
    for item, key in zip(items, keys, strict=True):
        try:
            if key is not None:
                limits.check_name(key, "item key", limits.MAX_QUERY_LENGTH, "limits.MAX_QUERY_LENGTH")
                if key in seen_keys:
                    raise InvalidInput(f"item key {key!r} is given twice in the batch",
                                       errors=[{"param": "key", "message": "given twice"}])
                seen_keys.add(key)
                if key in existing:
                    old = existing[key]
                    if old.request_hash != item_hash(item):
                        raise InvalidInput(f"item key {key!r} was used for job {old.id} with other parameters",
                                           errors=[{"param": "key", "message": f"used for job {old.id}"}])
                    skipped[item.index] = old.id
                    continue
            limits.check_name(item.template, "template name", cfg.max_name_length)
            limits.check_params(item.params, cfg)
            ref = (item.template, item.version)
            if ref not in templates:
                try:
                    templates[ref] = get_template(session, item.template, item.version)
                except MediaLabError as exc:
                    templates[ref] = exc
            found = templates[ref]
            if isinstance(found, MediaLabError):
                raise found
            row, t = found
            valid.append((item, key, row, t, _validated(session, pool, t, item.params, cfg, defs, checked, arts,
                                                         memo)))
        except MediaLabError as exc:
            errors.extend(_item_errors(item.index, exc))
            first = first or f"Item {item.index}: {exc.message}"
    if errors:
        bad = sorted({e["item"] for e in errors})
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise InvalidInput(f"{len(bad)} of {len(items)} batch items are invalid (items {shown}); nothing was "
                           f"submitted. {first}", errors=errors[:MAX_LISTED_ERRORS],
                           bad_items=len(bad))
    if dry_run:
        return Created(None, skipped, [item for item, *_ in valid], written=False, dry_run=True)
    if not valid:  # every item skipped: no empty batch; the answer is the batch of their jobs, if only one
        of = {existing[k].batch_id for k in keys if k}
        only = next(iter(of)) if len(of) == 1 else None
        return Created(batch_db.get_batch(session, only) if only else None, skipped, written=False)
    templates_used = sorted({t.ref for _, _, _, t, _ in valid})
    batch = Batch(api_key_id=api_key_id, label=label, items=len(items),
                  template=templates_used[0].split("@")[0] if len(templates_used) == 1 else None,
                  request=(request or {}) | {"templates": templates_used, "skipped": len(skipped)},
                  idempotency_key=idempotency_key, request_hash=request_hash if idempotency_key else None)
    session.add(batch)
    try:
        session.flush()  # the batch row before its jobs
    except IntegrityError:
        session.rollback()
        old_batch = batch_db.idempotent_batch(session, api_key_id, idempotency_key,
                                              request_hash) if idempotency_key else None
        if old_batch is None:
            raise
        return Created(old_batch, written=False, replayed=True)  # a concurrent create with this key won
    at = now()
    jobs: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for n, (item, key, row, t, values) in enumerate(valid):
        queued_at = at + timedelta(microseconds=n)  # the dispatcher takes a batch's items in their order
        job = _job_row(template_version_id=row.id, template=t.name, version=t.version, params=values,
                       priority=priority, timeout_s=timeout_s or t.manifest.timeout_s, api_key_id=api_key_id,
                       batch_id=batch.id, batch_item=item.index, idempotency_key=key,
                       request_hash=item_hash(item) if key else None, created_at=queued_at, queued_at=queued_at)
        jobs.append(job)
        inputs.extend({"job_id": job["id"], "artifact_id": values[p.name]} for p in t.manifest.parameters
                      if p.type in tpl.ARTIFACT_TYPES and values.get(p.name))
        events.append(_event_row(job["id"], at, JobState.QUEUED, "submitted (batch)",
                                 {"template": t.ref, "hash": t.content_hash, "batch": batch.id}))
    batch_db.insert_rows(session, Job, jobs)
    batch_db.insert_rows(session, JobInput, inputs)
    batch_db.insert_rows(session, JobEvent, events)
    audit.record(session, "batch.create", batch.id, {"items": len(items), "jobs": len(jobs), "skipped": len(skipped),
                                                     "templates": templates_used, "priority": priority})
    session.commit()
    del loaded
    return Created(batch, skipped)


def frame_inputs(session: Session, store: ObjectStore, video_id: str, spec: frames_rules.FrameSpec, *,
                 dry_run: bool = False, tags: Iterable[str] = (), settings: Settings | None = None) -> list[str]:
    """A batch's inputs taken from a video: the frames ``spec`` selects (``app/frames.py``), their artifact ids
    in time order. Stored first (idempotent: a frame is stored once; their own commit, before the batch's).
    ``dry_run``: selected only, nothing stored; a frame not stored yet is named by a stand-in row that lives in
    this session alone (attached as if loaded, never added, so nothing flushes or writes it) for the items'
    validation to find an image there."""
    if not dry_run:
        return [a.id for a in frame_app.extract_frames(session, store, video_id, spec, tags, settings).frames]
    chosen = frame_app.select_frames(session, store, video_id, spec, settings)
    stored = {a.origin: a.id for a in frame_app.stored_frames(session, chosen.video.id, chosen.indexes).values()}
    ids = []
    for index, time_s in zip(chosen.indexes, chosen.times, strict=True):
        origin = frames_rules.origin(chosen.video.id, index)
        if origin not in stored:
            stand_in = Artifact(origin=origin, key="", sha256="", size=0, content_type="image/png",
                                filename=f"frame_{index:06d}.png", role="input", input_artifacts=[chosen.video.id],
                                frame_index=index, time_s=time_s)
            make_transient_to_detached(stand_in)
            session.add(stand_in)
            session.info.setdefault("frame_stand_ins", []).append(stand_in)  # the identity map holds weakly
            stored[origin] = stand_in.id
        ids.append(stored[origin])
    return ids


def create_pipeline_batch(session: Session, pool: Pool | None, g: rules.PipelineGrid, *,
                          api_key_id: str | None = None, label: str | None = None, priority: int = 0,
                          request: dict[str, Any] | None = None, settings: Settings | None = None) -> Batch:
    """A batch of pipeline runs, one per input of ``g``: every run checked (``pipeline_runs.check_run``, and its
    first steps by their templates) and the whole batch refused with one 422 naming every bad item, else the
    batch, its runs and their first steps' jobs (with ``batch_id`` and ``batch_item``) in one transaction."""
    cfg = settings or get_settings()
    check_job_fields(priority, None, cfg)
    row = get_pipeline(session, g.pipeline, g.version)
    declared = {i.name: i.type.value for i in checked_from_row(row).pipeline.inputs}
    items = rules.expand_runs(g, rules.artifact_input(declared, g.input_param), cfg.max_batch_items)
    errors: list[dict[str, Any]] = []
    for item in items:
        errors += [{"item": item.index, **e} for e in run_app.check_run(session, row, item.inputs, item.params)]
    ref = f"{row.name}@v{row.version}"
    batch = Batch(api_key_id=api_key_id, label=label, items=len(items),
                  request=(request or {}) | {"kind": "pipeline", "pipeline": ref})
    if not errors:
        session.add(batch)
        session.flush()
        for item in items:  # a first step its template refuses: that item is bad too (nothing is committed)
            try:
                run_app.write_run(session, pool, row, item.inputs, item.params, reuse=True, priority=priority,
                                  api_key_id=api_key_id, settings=cfg, batch_id=batch.id, batch_item=item.index)
            except MediaLabError as exc:
                errors.extend(_item_errors(item.index, exc))
    if errors:
        session.rollback()
        bad = sorted({e["item"] for e in errors})
        first = next(e for e in errors if e["item"] == bad[0])
        raise InvalidInput(f"{len(bad)} of {len(items)} batch items are invalid (items "
                           f"{', '.join(map(str, bad[:10]))}{', ...' if len(bad) > 10 else ''}); nothing was "
                           f"submitted. Item {bad[0]}: {first['param']}: {first['message']}",
                           errors=errors[:MAX_LISTED_ERRORS], bad_items=len(bad))
    audit.record(session, "batch.create", batch.id, {"items": len(items), "pipeline": ref, "priority": priority})
    session.commit()
    return batch


def is_pipeline_batch(batch: Batch) -> bool:
    """A batch of pipeline runs (``create_pipeline_batch``), not of template jobs."""
    return (batch.request or {}).get("kind") == "pipeline"


def _job_row(**fields: Any) -> dict[str, Any]:
    """A QUEUED comfy job as a row for ``insert_rows`` (every column given: one INSERT for all rows)."""
    return {"id": new_id(), "kind": "comfy", "state": JobState.QUEUED, "cancel_requested": False, "progress": 0.0,
            "run_after": None, "error": None, "started_at": None, "finished_at": None, "local_only": False,
            **fields}


def _event_row(job_id: str, at: datetime, state: JobState | None, reason: str, data: dict[str, Any] | None,
               kind: str = "state") -> dict[str, Any]:
    return {"job_id": job_id, "at": at, "kind": kind, "state": state, "reason": reason, "data": data}


def cancel_batch(session: Session, batch_id: str) -> Batch:
    """Every QUEUED job of the batch CANCELLED at once, every RUNNING one flagged (its dispatcher interrupts
    it, as ``jobs.cancel_job`` does), in one transaction."""
    batch = batch_db.get_batch(session, batch_id)
    batch_id = batch.id  # the full id (a prefix may have been given)
    runs = 0
    for run_id in batch_db.active_run_ids(session, batch_id):  # no further step of them is submitted
        run = run_db.lock_run(session, run_id)
        if run is not None and not RunState(run.state).final:
            run_app.request_cancel(session, run)
            runs += 1
    at = now()
    cancelled = list(session.execute(
        update(Job).where(col(Job.batch_id) == batch_id, col(Job.state) == JobState.QUEUED)
        .values(state=JobState.CANCELLED, finished_at=at).returning(col(Job.id))).scalars())
    flagged = list(session.execute(
        update(Job).where(col(Job.batch_id) == batch_id, col(Job.state) == JobState.RUNNING,
                          col(Job.cancel_requested).is_(False))
        .values(cancel_requested=True).returning(col(Job.id))).scalars())
    if not cancelled and not flagged and not runs and batch.cancel_requested:
        raise Conflict(f"batch {batch_id} is already cancelled")
    batch_db.insert_rows(session, JobEvent, [_event_row(j, at, JobState.CANCELLED, "batch cancelled while queued",
                                                        None) for j in cancelled])
    batch_db.insert_rows(session, JobEvent, [_event_row(j, at, None, "cancel requested (batch)", None, "info")
                                             for j in flagged])
    batch.cancel_requested = True
    session.add(batch)
    audit.record(session, "batch.cancel", batch_id, {"cancelled": len(cancelled), "cancel_requested": len(flagged),
                                                     "runs": runs})
    session.commit()
    session.refresh(batch)
    return batch


def retry_failed(session: Session, batch_id: str) -> tuple[Batch, list[Job]]:
    """A new QUEUED job for each item whose newest job FAILED or was CANCELLED: the same template version,
    parameters, priority and key, linked to the batch (the old job stays as it was). Its parameters were
    validated when the batch was made; the dispatcher fails a job that became impossible since."""
    batch = batch_db.get_batch(session, batch_id)
    batch_id = batch.id  # the full id (a prefix may have been given)
    if is_pipeline_batch(batch):  # a step's job again outside its run would run nothing after it
        raise Conflict(f"batch {batch_id} is a batch of pipeline runs: resume its failed runs "
                       "(POST /v1/pipeline-runs/{id}/resume)")
    old = batch_db.retryable_jobs(session, batch_id)
    if not old:
        raise Conflict(f"batch {batch_id} has no failed or cancelled item to retry")
    inputs: dict[str, list[str]] = {}
    for chunk in _chunks([j.id for j in old]):
        for ji in session.exec(select(JobInput).where(col(JobInput.job_id).in_(chunk))):
            inputs.setdefault(ji.job_id, []).append(ji.artifact_id)
    at = now()
    rows = [_job_row(template_version_id=j.template_version_id, template=j.template, version=j.version,
                     params=j.params, priority=j.priority, timeout_s=j.timeout_s, api_key_id=j.api_key_id,
                     batch_id=batch_id, batch_item=j.batch_item, idempotency_key=None, request_hash=None,
                     created_at=at + timedelta(microseconds=n), queued_at=at + timedelta(microseconds=n))
            for n, j in enumerate(old)]
    batch_db.insert_rows(session, Job, rows)
    batch_db.insert_rows(session, JobInput, [{"job_id": new["id"], "artifact_id": a}
                                             for j, new in zip(old, rows, strict=True) for a in inputs.get(j.id, [])])
    batch_db.insert_rows(session, JobEvent, [_event_row(new["id"], at, JobState.QUEUED, "retried (batch)",
                                                        {"retry_of": j.id, "batch": batch_id})
                                             for j, new in zip(old, rows, strict=True)])
    batch.cancel_requested = False
    session.add(batch)
    audit.record(session, "batch.retry", batch_id, {"jobs": len(rows)})
    session.commit()
    session.refresh(batch)
    ids = [r["id"] for r in rows]
    return batch, [j for chunk in _chunks(ids) for j in session.exec(select(Job).where(col(Job.id).in_(chunk)))]


def batch_progress(session: Session, batch: Batch) -> rules.Progress:
    """Counts by state, the share finished and the ETA of a batch (reads only); a batch of pipeline runs is
    counted in runs."""
    if is_pipeline_batch(batch):
        return rules.run_progress(batch_db.run_counts_by_state(session, batch.id),
                                  batch_db.run_finished_times(session, batch.id, rules.ETA_WINDOW),
                                  batch.created_at, now())
    return rules.progress(batch_db.counts_by_state(session, batch.id),
                          batch_db.finished_times(session, batch.id, rules.ETA_WINDOW), batch.created_at, now())
