"""Training jobs in the job system: submit, claim by a trainer, heartbeat with progress, outputs, finish.

A training job is a ``Job`` of kind ``training`` (template ``train-lora``): the same states, events, SSE
stream, cancel and listing as any job, but dispatched to trainers instead of ComfyUI servers. Its
parameters hold the dataset artifact, the base checkpoint, the preset and the full validated
``TrainingSpec``. The rules of claims and leases are in ``claims.py``; this module does the database side.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select

from orchestrator.app import admission
from orchestrator.core import limits, sandbox
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from orchestrator.core.retry import RetryPolicy, outcome
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import audit
from orchestrator.db import jobs as job_db
from orchestrator.db import servers as server_db
from orchestrator.db.tables import Artifact, Attempt, Job, JobEvent, JobInput, LoraModel, Trainer, now
from orchestrator.runtime import ingest, media
from orchestrator.settings import Settings
from orchestrator.training.app import datasets as dataset_store
from orchestrator.training.app import registry as reg
from orchestrator.training.core import claims
from orchestrator.training.core.presets import TrainingSpec, spec_from
from orchestrator.training.runtime import checkpoint_files
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool

KIND = "training"
TEMPLATE = "train-lora"
DATASET_ROLE = "dataset"
OUTPUT_KINDS = ("sample", "checkpoint", "lora")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


# -- submit ----------------------------------------------------------------------------------------
def local_checkpoint(settings: Settings, name: str) -> Path | None:
    """The base checkpoint this orchestrator has (a file, or a diffusers folder a local trainer reads); a name
    that leaves the checkpoints folder (the sandbox's path rule), or names that folder itself (``.``), is never
    looked up."""
    if not name or sandbox.path_problem(name) or not PurePosixPath(name.replace("\\", "/")).parts:
        return None
    for root in (settings.models_dir, settings.shared_models_dir):
        if root and (root / "checkpoints" / name).exists():
            return root / "checkpoints" / name
    return None


def check_base(session: Session, settings: Settings, name: str) -> None:
    """The base checkpoint must be where trainers can get it: this orchestrator's models folder (it serves
    it) or a pool server's checkpoints (a trainer on that host has it in its models folder)."""
    if not name or (problem := sandbox.path_problem(name)):
        raise InvalidInput(f"base checkpoint: {problem or 'empty'}; give a name in the checkpoints folder")
    if path := local_checkpoint(settings, name):
        if path.is_dir():
            checkpoint_files.folder_members(path, name)  # a remote trainer gets it as a tar: servable throughout
        return
    if not name.endswith(CHECKPOINT_SUFFIXES):
        raise InvalidInput(f"base checkpoint {name!r}: a file ending in {' or '.join(CHECKPOINT_SUFFIXES)} (or a "
                           f"diffusers folder in {settings.models_dir / 'checkpoints'})")
    known: set[str] = set()
    for row in server_db.server_rows(session):
        caps = Capabilities.from_json(row.capabilities)
        known |= set(caps.models.get("checkpoints", frozenset()) if caps else frozenset())
    if name in known:
        return
    raise InvalidInput(f"base checkpoint {name!r} is neither in {settings.models_dir / 'checkpoints'} nor on any "
                       f"pool server (they have: {', '.join(sorted(known)[:10]) or 'none'})")


def served_checkpoint(settings: Settings, name: str) -> tuple[Path, list[checkpoint_files.Member] | None]:
    """What ``GET /v1/trainer/checkpoints/{name}`` sends: a file base (members None), or a diffusers folder with
    its checked members (sent as a tar). NotFound when this orchestrator does not have it."""
    if problem := sandbox.path_problem(name):
        raise InvalidInput(f"base checkpoint: {problem}")
    path = local_checkpoint(settings, name)
    if path is not None and path.is_dir():
        return path, checkpoint_files.folder_members(path, name)
    if path is None or not path.is_file():
        raise NotFound(f"base checkpoint {name!r} is not on the orchestrator; put it in the trainer's models folder")
    return path, None


def get_dataset(session: Session, artifact_id: str) -> Artifact:
    art = session.get(Artifact, artifact_id)
    if art is None or art.role != DATASET_ROLE:
        raise InvalidInput(f"unknown dataset {artifact_id!r}: build one with POST /v1/datasets "
                           "(medialab datasets build)")
    return art


def submit_training(session: Session, store: ObjectStore, settings: Settings, *, dataset: str, base: str,
                    preset: str | None = None, trigger: str | None = None, name: str | None = None,
                    overrides: dict[str, Any] | None = None, api_key_id: str | None = None, priority: int = 0,
                    timeout_s: float | None = None) -> Job:
    """Validate every option (dataset, base checkpoint, preset and overrides, model name), then queue."""
    values = dict(overrides or {})
    limits.check_params(values, settings, "training options")  # counts, lengths, finite numbers
    admission.check_job_fields(priority, timeout_s, settings)
    for what, value in (("trigger", trigger), ("model name", name)):
        if value is not None:
            limits.check_name(value, what, settings.max_name_length)
    ds = get_dataset(session, dataset)
    if trigger is not None:
        values["trigger"] = trigger
    spec = spec_from(preset, values)
    dataset_store.check_for(store, ds, spec)
    check_base(session, settings, base)
    lora_name = limits.check_name(name or (ds.params or {}).get("name") or spec.trigger.lower().replace(" ", "-"),
                                  "model name", reg.MAX_NAME_LENGTH, reg.NAME_LIMIT, pattern=reg.NAME,
                                  rule=reg.NAME_RULE)
    params = {"dataset": ds.id, "dataset_sha256": ds.sha256, "base_model": base, "preset": preset,
              "name": lora_name, "spec": spec.model_dump(mode="json")}
    job = Job(kind=KIND, template=TEMPLATE, version=1, params=params, priority=priority, timeout_s=timeout_s,
              api_key_id=api_key_id)
    session.add(job)
    session.add(JobInput(job_id=job.id, artifact_id=ds.id))
    session.add(JobEvent(job_id=job.id, kind="state", state=JobState.QUEUED, reason="submitted",
                         data={"kind": KIND, "preset": preset, "base_model": base, "name": lora_name}))
    audit.record(session, "job.submit", job.id, {"kind": KIND, "dataset": ds.id, "base_model": base,
                                                 "name": lora_name, "priority": priority})
    session.commit()
    return job


def training_spec(job: Job) -> TrainingSpec:
    return TrainingSpec.model_validate(job.params["spec"])


# -- trainers and claims ---------------------------------------------------------------------------
def touch_trainer(session: Session, name: str, gpu_server: str | None, info: dict[str, Any] | None) -> Trainer:
    """Record the trainer (resolving its GPU server by name, id or URL)."""
    url = server_db.get_server(session, gpu_server).url if gpu_server else None
    row = session.get(Trainer, name) or Trainer(name=name)
    row.gpu_server, row.last_seen = url, now()
    if info is not None:
        row.info = info
    session.add(row)
    return row


def claim(session: Session, name: str, lease_s: float, gpu_server: str | None = None,
          info: dict[str, Any] | None = None, policy: RetryPolicy | None = None,
          api_key_id: str | None = None) -> tuple[Job, Attempt] | str | None:
    """The next training job for this trainer, claimed with a lease; None when there is none; a reason
    (str) when there is one but the trainer must wait for its GPU to empty. The claim is bound to the API key
    that made it (None: the embedded trainer): only that key may act on it."""
    limits.check_json(info, "info")
    _take_back(session, policy or RetryPolicy())
    session.commit()  # the expired claims are taken back in a transaction of their own, whatever this claim gets
    trainer = touch_trainer(session, name, gpu_server, info)
    owner = claims.trainer_owner(name)
    job = session.exec(job_db.ready(KIND).limit(1).with_for_update(skip_locked=True)).first()
    if job is None:
        trainer.waiting_since = None
        session.commit()
        return None
    if not claims.may_start(trainer.gpu_server, attempt_db.inflight_by_server(session)):
        trainer.waiting_since = trainer.waiting_since or now()
        session.commit()
        return f"waiting for {trainer.gpu_server} to finish its inference work"
    attempt = attempt_db.start_attempt(session, job, owner, owner, lease_s, reason=f"claimed by trainer {name}")
    if attempt is None:
        session.rollback()
        return None
    attempt.api_key_id = api_key_id
    trainer.waiting_since = None
    session.add(trainer)
    session.commit()
    return job_db.get_job(session, job.id), attempt


def held_attempt(session: Session, attempt_id: str, name: str, api_key_id: str | None = None) -> tuple[Attempt, Job]:
    """The trainer's live claim; Forbidden when another API key made it, Conflict when it is no longer its own
    (expired and taken back)."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or not attempt.server.startswith("trainer:"):
        raise NotFound(f"unknown training claim {attempt_id}")
    if attempt.api_key_id != api_key_id:
        raise Forbidden(f"training claim {attempt_id} was made with another API key; only that key may act on it")
    if attempt.owner != claims.trainer_owner(name) or attempt.state != JobState.RUNNING:
        raise Conflict(f"attempt {attempt_id} is no longer held by trainer {name} ({attempt.state.value}); "
                       "stop working on it")
    return attempt, job_db.get_job(session, attempt.job_id)


def lock_claim(session: Session, attempt_id: str, name: str) -> bool:
    """Whether the claim is still the trainer's, as the first write of the transaction that records something
    for it: a conditional UPDATE (a no-op on the row) that holds the attempt's row lock on PostgreSQL, the
    write lock on SQLite, until that transaction ends, so the claim cannot be taken back in between."""
    owner = claims.trainer_owner(name)
    res = session.execute(update(Attempt).where(col(Attempt.id) == attempt_id, col(Attempt.state) == JobState.RUNNING,
                                                col(Attempt.owner) == owner).values(owner=owner))
    return res.rowcount == 1


MEASURES = ("loss", "eta_s", "rate")  # a diverged run reports a NaN or infinite loss: recorded as null


def check_events(events: list[dict[str, Any]], settings: Settings) -> None:
    """A heartbeat's events: at most ``max_heartbeat_events``, each bounded (``limits.check_values``; the
    measures may be NaN or infinite), ``kind`` a string, ``step`` and ``total`` non-negative integers."""
    limits.check_count(len(events), "events in one heartbeat", "max_heartbeat_events", settings.max_heartbeat_events)
    for i, e in enumerate(events):
        limits.check_values(finite_measures(e), f"events[{i}]", settings)
        if not isinstance(e.get("kind", "progress"), str):
            raise InvalidInput(f"events[{i}].kind is a string (progress, log, ...)")
        for k in ("step", "total"):
            v = e.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidInput(f"events[{i}].{k} is a non-negative integer, not {str(v)[:40]!r}")


def finite_measures(e: dict[str, Any]) -> dict[str, Any]:
    """The event with a non-finite loss, ETA or rate as None (JSON and the database hold no NaN)."""
    bad = [k for k in MEASURES if isinstance(e.get(k), float) and not math.isfinite(e[k])]
    return {**e, **dict.fromkeys(bad)} if bad else e


def heartbeat(session: Session, attempt_id: str, name: str, lease_s: float,
              events: list[dict[str, Any]] | None = None, api_key_id: str | None = None,
              settings: Settings | None = None) -> dict[str, Any]:
    """Renew the claim and record progress; the reply says whether the job is to be cancelled. With
    ``settings`` (a request's events) the events are checked first (``check_events``)."""
    if settings is not None:
        check_events(events or [], settings)
    attempt, job = held_attempt(session, attempt_id, name, api_key_id)
    until = now() + timedelta(seconds=lease_s)
    res = session.execute(update(Attempt).where(col(Attempt.id) == attempt_id, col(Attempt.state) == JobState.RUNNING,
                                                col(Attempt.owner) == claims.trainer_owner(name))
                          .values(lease_until=until))
    if res.rowcount != 1:  # taken back between the read and the write
        session.rollback()
        raise Conflict(f"attempt {attempt_id} is no longer held by trainer {name}; stop working on it")
    trainer = session.get(Trainer, name)
    if trainer:
        trainer.last_seen = now()
        session.add(trainer)
    fields: dict[str, Any] = {}
    for raw in events or []:
        e = finite_measures(raw)
        kind = e.get("kind", "progress")
        step, total = e.get("step"), e.get("total")
        if kind == "progress":
            data = {k: e.get(k) for k in ("step", "total", "loss", "eta_s", "rate")}
            if step is not None and total:
                data["fraction"] = fields["progress"] = min(step / total, 1.0)
            session.add(JobEvent(job_id=job.id, kind="progress", data=data,
                                 reason=claims.progress_reason(step, total, raw.get("loss"), e.get("eta_s"))))
        else:
            session.add(JobEvent(job_id=job.id, kind="info", reason=str(e.get("message") or kind)[:500],
                                 data={k: v for k, v in e.items() if v is not None}))
    if fields:
        session.execute(update(Job).where(col(Job.id) == job.id).values(**fields))
    session.commit()
    timed_out = claims.timed_out(job.started_at, job.timeout_s, now())
    return {"cancel": bool(job.cancel_requested) or timed_out, "timed_out": timed_out,
            "lease_until": until.isoformat()}


def store_output(session: Session, store: ObjectStore, attempt_id: str, name: str, kind: str,
                 data: BinaryIO, filename: str, step: int | None = None, api_key_id: str | None = None,
                 settings: Settings | None = None) -> Artifact:
    """A sample image, an intermediate checkpoint or the final LoRA of the claim, stored with lineage. The
    bytes pass the same checks as an upload (``ingest.checked_upload``) before they are stored.

    No transaction is open while the bytes are spooled, inspected and stored (a checkpoint is gigabytes; a
    held connection per upload would empty the pool): the claim is checked in a short read first, and again
    in the transaction that writes the rows (``lock_claim``), so a claim taken back meanwhile gets nothing
    written."""
    if kind not in OUTPUT_KINDS:
        raise InvalidInput(f"output kind {kind[:40]!r}: one of {', '.join(OUTPUT_KINDS)}")
    if step is not None and not 0 <= step <= limits.INT64_MAX:
        raise InvalidInput(f"step {step} is outside 0..{limits.INT64_MAX}", limit="int64", value=limits.INT64_MAX)
    attempt, job = held_attempt(session, attempt_id, name, api_key_id)
    filename = media.check_filename(filename) or kind
    origin = f"output:{job.id}:{attempt.id}:{kind}:{filename}"  # a retry's files are its own
    lineage: dict[str, Any] = dict(job_id=job.id, attempt_id=attempt.id, output_name=kind, template=TEMPLATE,
                                   template_version=1, params=job.params, input_artifacts=[job.params["dataset"]],
                                   server=attempt.server)  # read before the reads end
    existing = session.exec(select(Artifact).where(Artifact.origin == origin)).first()
    session.commit()  # the reads end here: no connection is held while the bytes are read and stored
    if existing:
        return existing
    with ingest.checked_upload(data, filename, settings) as (spool, info):
        art = ingest.store_checked(store, spool, info, origin=origin, role="output", filename=filename, **lineage)
    if not lock_claim(session, attempt.id, name):
        session.rollback()
        raise Conflict(f"attempt {attempt_id} is no longer held by trainer {name}; its {kind} is not taken")
    session.add(art)
    session.add(JobEvent(job_id=job.id, kind="info", reason=f"{kind} stored: {filename}" +
                         (f" (step {step})" if step is not None else ""),
                         data={"artifact": art.id, "kind": kind, "step": step, "sha256": art.sha256}))
    try:
        session.commit()
    except IntegrityError:  # the same output uploaded twice at once (a retried request): theirs is the artifact
        session.rollback()
        return session.exec(select(Artifact).where(Artifact.origin == origin)).one()
    return art


def finish(session: Session, store: ObjectStore, settings: Settings, attempt_id: str, name: str, state: JobState,
           error: dict[str, Any] | None = None, lora_artifact: str | None = None, api_key_id: str | None = None) -> Job:
    """End the claim. SUCCEEDED needs the final LoRA (uploaded as kind ``lora``): it is registered in the
    model registry before the job is SUCCEEDED. Distribution to the pool is the caller's next step."""
    limits.check_json(error, "error")  # finite numbers, no NUL: what the database and JSON answers hold
    attempt, job = held_attempt(session, attempt_id, name, api_key_id)
    if state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        raise InvalidInput(f"a claim ends SUCCEEDED, FAILED or CANCELLED, not {state.value}")
    art = None
    if state == JobState.SUCCEEDED:
        art = session.get(Artifact, lora_artifact) if lora_artifact else None
        if art is None or art.job_id != job.id or art.output_name != "lora":
            raise InvalidInput("a successful training reports its final LoRA (an output of kind lora of this job)")
    if state == JobState.CANCELLED and not job.cancel_requested and claims.timed_out(job.started_at, job.timeout_s,
                                                                                     now()):
        state, error = JobState.FAILED, {"message": f"timed out after {job.timeout_s:g} s"}
    # The attempt ends first (its conditional UPDATE opens the transaction): a claim taken back meanwhile
    # registers nothing. The registration, the attempt and the job commit together or not at all.
    if not attempt_db.finish_attempt(session, attempt.id, attempt.owner, state, error):
        session.rollback()
        raise Conflict(f"attempt {attempt_id} is no longer held by trainer {name}; its result is not taken")
    if art is not None:
        try:
            spec = training_spec(job)
            model = reg.register(session, store, art, job.params["name"], base_model=job.params["base_model"],
                                 trigger_words=[spec.trigger], training=job.params,
                                 dataset_artifact_id=job.params["dataset"], job_id=job.id,
                                 initial_state=settings.lora_initial_state)
        except InvalidInput as exc:
            state, error = JobState.FAILED, {"message": f"the trained file cannot be registered: {exc.message}"}
            session.execute(update(Attempt).where(col(Attempt.id) == attempt.id).values(state=state, error=error))
        else:
            session.add(JobEvent(job_id=job.id, kind="info", reason=f"registered {model.filename} ({model.state})",
                                 data={"model": model.id, "sha256": model.sha256, "filename": model.filename}))
    message = (error or {}).get("message", "")
    if not job_db.transition(session, job.id, JobState.RUNNING, state, message or "training finished",
                             error=error, progress=1.0 if state == JobState.SUCCEEDED else job.progress):
        session.rollback()
        raise Conflict(f"job {job.id} is no longer RUNNING; the result of attempt {attempt_id} is not taken")
    session.commit()
    return job_db.get_job(session, job.id)


def expire_claims(session: Session, policy: RetryPolicy) -> int:
    """Take back the claims whose trainer stopped renewing them (crashed, cut off); returns how many."""
    taken = _take_back(session, policy)
    session.commit()
    return taken


def _take_back(session: Session, policy: RetryPolicy) -> int:
    """``expire_claims`` in the caller's transaction (the caller commits)."""
    stale = session.exec(select(Attempt).where(Attempt.state == JobState.RUNNING,
                                               col(Attempt.server).startswith(claims.TRAINER_PREFIX),
                                               or_(col(Attempt.lease_until).is_(None),
                                                   col(Attempt.lease_until) < now()))).all()
    taken = 0
    for a in stale:
        job = session.get(Job, a.job_id)
        # every training attempt counts (none ends with counts=False) and is numbered 1, 2, ... in order:
        # its number is the attempts spent, as ``attempt_db.counted_attempts`` would count them
        out = outcome(policy, cancel_requested=bool(job and job.cancel_requested), spent=a.number)
        reason = claims.lost_claim_reason(out, a.server.removeprefix(claims.TRAINER_PREFIX), a.number)
        if not attempt_db.finish_attempt(session, a.id, a.owner, JobState.FAILED, {"message": reason}):
            continue
        if out.state == JobState.QUEUED:
            job_db.requeue(session, a.job_id, reason, out.delay_s or 0.0)
        else:
            job_db.transition(session, a.job_id, JobState.RUNNING, out.state, reason,
                              error={"message": reason} if out.state == JobState.FAILED else None)
        taken += 1
    return taken


def latest_model(session: Session, job_id: str) -> LoraModel | None:
    """The LoRA a training job registered (the newest, should there ever be more than one)."""
    return session.exec(select(LoraModel).where(LoraModel.job_id == job_id)
                        .order_by(col(LoraModel.created_at).desc(), col(LoraModel.version).desc())).first()


def distribute_result(session: Session, store: ObjectStore, settings: Settings, pool: Pool | None,
                      job_id: str) -> dict[str, Any] | None:
    """After a successful training: put its registered LoRA on the pool servers (recorded as an event)."""
    model = latest_model(session, job_id)
    if model is None:
        return None
    result = reg.copy_to_servers(session, store, settings, model, pool)
    ok = sorted(n for n, r in result.items() if r.get("ok"))
    bad = {n: r.get("error") for n, r in result.items() if not r.get("ok")}
    reason = f"{model.filename} on {', '.join(ok) or 'no server'}" + (f"; not on {bad}" if bad else "")
    session.add(JobEvent(job_id=job_id, kind="info", reason=reason, data={"distribution": result}))
    session.commit()
    return result
