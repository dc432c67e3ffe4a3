"""Batch use cases (``app/batches.py``) on SQLite and PostgreSQL: every item validated before anything is
written (one 422 naming each bad item), one transaction for the batch and its jobs, cancel, retry, and fair
share between a huge batch of one key and another key's single job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from orchestrator.app import batches as batch_app
from orchestrator.app import jobs as job_app
from orchestrator.app import templates as template_app
from orchestrator.core import batches as rules
from orchestrator.core.errors import Conflict, InvalidInput, NotFound
from orchestrator.core.placement import Candidate, fair_order
from orchestrator.core.states import JobState
from orchestrator.db import batches as batch_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import ApiKey, Artifact, AuditEvent, Batch, Job, JobEvent, JobInput, new_id
from orchestrator.runtime import library
from orchestrator.runtime.dispatcher import BATCH
from orchestrator.settings import PROJECT_ROOT, Settings

LIBRARY = library.scan_library(PROJECT_ROOT / "comfy_workflows")
UPSCALE = "upscale-esrgan"


@pytest.fixture
def db(any_db: Database) -> Iterator[Database]:
    with any_db.session() as s:
        template_app.sync_templates(s, LIBRARY)
        s.add_all([ApiKey(id="alice", name="alice", key_hash="ha", roles=["run"]),
                   ApiKey(id="bob", name="bob", key_hash="hb", roles=["run"])])
        s.commit()
    yield any_db


def frames(db: Database, n: int) -> list[str]:
    """``n`` image artifacts (rows only: validation reads the row)."""
    arts = [Artifact(origin=f"input:{new_id()}", key=f"k{i}", sha256="0" * 64, size=1, content_type="image/png",
                     filename=f"f{i}.png", role="input") for i in range(n)]
    with db.session() as s:
        s.add_all(arts)
        s.commit()
        return [a.id for a in arts]


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path / "home", **kw)  # type: ignore[arg-type]


def upscales(ids: list[str], **grid: list[object]) -> list[rules.Item]:
    return rules.expand(rules.Grid(template=UPSCALE, inputs=ids, input_param="image", grid=grid), 10_000)


def count(s: Session, model: type) -> int:
    return s.exec(select(func.count()).select_from(model)).one()


def test_a_batch_and_all_its_jobs_in_one_commit(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    commits: list[int] = []
    with db.session() as s:
        event.listen(s, "after_commit", lambda _s: commits.append(1))
        created = batch_app.create_batch(s, None, upscales(ids, resize=[0.5, 1.0]), api_key_id="alice",
                                         label="shot 12", settings=settings(tmp_path))
        assert len(commits) == 1
        batch = created.batch
        jobs = batch_db.batch_jobs(s, batch.id)
        assert batch.items == 6 and batch.label == "shot 12" and batch.template == UPSCALE
        assert [j.batch_item for j in jobs] == list(range(6))
        assert {j.api_key_id for j in jobs} == {"alice"} and {j.state for j in jobs} == {JobState.QUEUED}
        assert [(j.params["image"], j.params["resize"]) for j in jobs[:3]] == [(ids[0], 0.5), (ids[0], 1.0),
                                                                                (ids[1], 0.5)]
        assert jobs[0].params["model"] == "RealESRGAN_x4plus.pth"  # defaults filled in, as for one job
        assert count(s, JobInput) == 6 and count(s, JobEvent) == 6
        assert batch_db.counts_by_state(s, batch.id) == {JobState.QUEUED: 6}
        assert s.exec(select(AuditEvent.action, AuditEvent.target)).all() == [("batch.create", batch.id)]
        p = batch_app.batch_progress(s, batch)
        assert (p.total, p.done, p.eta_s, p.finished) == (6, 0, None, False)
        assert batch_db.get_batch(s, batch.id[:8]).id == batch.id  # a prefix, as for jobs


def test_one_bad_item_refuses_the_whole_batch_naming_every_bad_item(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 2)
    items = [rules.Item(0, UPSCALE, {"image": ids[0]}),
             rules.Item(1, UPSCALE, {"image": ids[1], "resize": 9.0}),  # over the parameter's max
             rules.Item(2, UPSCALE, {"image": "0" * 32}),  # unknown artifact
             rules.Item(3, "no-such-template", {}),
             rules.Item(4, UPSCALE, {"image": ids[0]})]
    with db.session() as s, pytest.raises(InvalidInput) as exc:
        batch_app.create_batch(s, None, items, api_key_id="alice", settings=settings(tmp_path))
    err = exc.value
    assert "3 of 5 batch items are invalid (items 1, 2, 3); nothing was submitted" in err.message
    assert {e["item"] for e in err.extra["errors"]} == {1, 2, 3}
    assert next(e for e in err.extra["errors"] if e["item"] == 1)["param"] == "resize"
    assert next(e for e in err.extra["errors"] if e["item"] == 2)["param"] == "image"
    with db.session() as s:
        assert count(s, Batch) == count(s, Job) == count(s, JobEvent) == count(s, AuditEvent) == 0


def test_each_template_is_found_once_not_once_per_item(db: Database, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ids = frames(db, 20)
    calls: list[str] = []
    real = batch_app.get_template
    monkeypatch.setattr(batch_app, "get_template", lambda s, name, v=None: calls.append(name) or real(s, name, v))
    template_db.clear_cache()
    with db.session() as s:
        batch_app.create_batch(s, None, upscales(ids), api_key_id="alice", settings=settings(tmp_path))
    assert calls == [UPSCALE]


def test_the_item_limit_is_the_setting(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    with db.session() as s, pytest.raises(InvalidInput, match="max_batch_items=2"):
        batch_app.create_batch(s, None, upscales(ids), settings=settings(tmp_path, max_batch_items=2))


def test_item_keys_make_a_rerun_skip_what_is_there(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    items = upscales(ids)
    keys = [f"shot12/{i}" for i in ids]
    with db.session() as s:
        first = batch_app.create_batch(s, None, items[:2], api_key_id="alice", keys=keys[:2],
                                       settings=settings(tmp_path))
        first_jobs = {j.batch_item: j.id for j in batch_db.batch_jobs(s, first.batch.id)}
        again = batch_app.create_batch(s, None, items, api_key_id="alice", keys=keys, settings=settings(tmp_path))
        assert again.skipped == {0: first_jobs[0], 1: first_jobs[1]}
        assert [j.batch_item for j in batch_db.batch_jobs(s, again.batch.id)] == [2]
        other = rules.Item(0, UPSCALE, {"image": ids[0], "resize": 0.5})
        with pytest.raises(InvalidInput, match="other parameters"):
            batch_app.create_batch(s, None, [other], api_key_id="alice", keys=[keys[0]], settings=settings(tmp_path))


def test_a_dry_run_validates_everything_and_writes_nothing(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    items = upscales(ids)
    keys = [f"dry/{i}" for i in ids]
    with db.session() as s:
        batch_app.create_batch(s, None, items[:1], api_key_id="alice", keys=keys[:1], settings=settings(tmp_path))
        before = (count(s, Batch), count(s, Job), count(s, JobEvent), count(s, AuditEvent))
        dry = batch_app.create_batch(s, None, items, api_key_id="alice", keys=keys, settings=settings(tmp_path),
                                     dry_run=True)
        assert dry.batch is None and list(dry.skipped) == [0]
        assert [i.index for i in dry.planned] == [1, 2]
        bad = [*items, rules.Item(3, UPSCALE, {"image": "nope"})]
        with pytest.raises(InvalidInput, match="1 of 4 batch items are invalid"):
            batch_app.create_batch(s, None, bad, api_key_id="alice", settings=settings(tmp_path), dry_run=True)
        s.rollback()
        assert (count(s, Batch), count(s, Job), count(s, JobEvent), count(s, AuditEvent)) == before


def test_cancel_cancels_the_queued_and_flags_the_running_in_one_transaction(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 4)
    with db.session() as s:
        batch = batch_app.create_batch(s, None, upscales(ids), api_key_id="alice",
                                       settings=settings(tmp_path)).batch
        jobs = batch_db.batch_jobs(s, batch.id)
        assert job_db.transition(s, jobs[0].id, JobState.QUEUED, JobState.RUNNING, "test")
        assert job_db.transition(s, jobs[1].id, JobState.QUEUED, JobState.RUNNING, "test")
        assert job_db.transition(s, jobs[1].id, JobState.RUNNING, JobState.SUCCEEDED, "test")
        s.commit()
        commits: list[int] = []
        event.listen(s, "after_commit", lambda _s: commits.append(1))
        batch = batch_app.cancel_batch(s, batch.id[:8])  # a prefix, as the CLI prints ids
        assert len(commits) == 1 and batch.cancel_requested
        s.expire_all()
        states = {j.batch_item: (j.state, j.cancel_requested) for j in batch_db.batch_jobs(s, batch.id)}
        assert states == {0: (JobState.RUNNING, True), 1: (JobState.SUCCEEDED, False),
                          2: (JobState.CANCELLED, False), 3: (JobState.CANCELLED, False)}
        assert all(j.finished_at for j in batch_db.batch_jobs(s, batch.id, JobState.CANCELLED))
        assert s.exec(select(AuditEvent.action).order_by(AuditEvent.id)).all()[-1] == "batch.cancel"
        with pytest.raises(Conflict, match="already cancelled"):
            batch_app.cancel_batch(s, batch.id)


def test_retry_makes_new_jobs_for_the_failed_and_cancelled_items_only(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    with db.session() as s:
        batch = batch_app.create_batch(s, None, upscales(ids), api_key_id="alice",
                                       settings=settings(tmp_path)).batch
        with pytest.raises(Conflict, match="no failed or cancelled item"):
            batch_app.retry_failed(s, batch.id)
        j0, j1, j2 = batch_db.batch_jobs(s, batch.id)
        for j, end in ((j0, JobState.SUCCEEDED), (j1, JobState.FAILED)):
            assert job_db.transition(s, j.id, JobState.QUEUED, JobState.RUNNING, "test")
            assert job_db.transition(s, j.id, JobState.RUNNING, end, "test")
        assert job_db.transition(s, j2.id, JobState.QUEUED, JobState.CANCELLED, "test")
        s.commit()
        batch, new = batch_app.retry_failed(s, batch.id[:8])  # a prefix, as the CLI prints ids
        assert sorted(j.batch_item for j in new) == [1, 2]
        assert {j.params["image"] for j in new} == {ids[1], ids[2]} and {j.api_key_id for j in new} == {"alice"}
        assert count(s, JobInput) == 5
        assert batch_db.counts_by_state(s, batch.id) == {JobState.SUCCEEDED: 1, JobState.FAILED: 1,
                                                         JobState.CANCELLED: 1, JobState.QUEUED: 2}
        with pytest.raises(Conflict):  # the newest job of each item is queued or done now
            batch_app.retry_failed(s, batch.id)
        assert s.exec(select(AuditEvent.action).order_by(AuditEvent.id)).all()[-1] == "batch.retry"


def test_a_key_lists_its_own_batches_an_admin_all(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 1)
    with db.session() as s:
        a = batch_app.create_batch(s, None, upscales(ids), api_key_id="alice", settings=settings(tmp_path)).batch
        b = batch_app.create_batch(s, None, upscales(ids), api_key_id="bob", settings=settings(tmp_path)).batch
        assert [x.id for x in batch_db.list_batches(s, "alice")] == [a.id]
        assert {x.id for x in batch_db.list_batches(s, "alice", every_key=True)} == {a.id, b.id}
        with pytest.raises(NotFound):
            batch_db.get_batch(s, "nope-nope")


def test_a_huge_batch_of_one_key_does_not_starve_another_keys_single_job(db: Database, tmp_path: Path) -> None:
    """Alice's batch, queued first, has more jobs than a dispatch round considers (``BATCH``); Bob's single job,
    queued after it, is still among the candidates and, by fair share, dispatched first or second."""
    ids = frames(db, BATCH + 50)
    with db.session() as s:
        batch_app.create_batch(s, None, upscales(ids), api_key_id="alice", settings=settings(tmp_path))
        bobs = job_app.submit_job(s, None, UPSCALE, {"image": ids[0]}, api_key_id="bob",
                                  settings=settings(tmp_path))
        candidates = job_db.queued_candidates(s, limit=BATCH)
        assert bobs.id in {j.id for j in candidates}
        order = fair_order([Candidate(j.id, j.priority, j.api_key_id, j.queued_at) for j in candidates],
                           job_db.running_by_key(s))
        assert bobs.id in [c.id for c in order[:2]]
        s.rollback()


def test_two_thousand_items_in_one_transaction(db: Database, tmp_path: Path) -> None:
    """Not a benchmark (10,000 items take about 2 s on SQLite, 2.5 s on PostgreSQL here: benchmarks/batch_submit.py);
    a loose bound that catches a per-item query or commit creeping back."""
    ids = frames(db, 100)
    items = upscales(ids, resize=[0.25 + i / 100 for i in range(20)])
    assert len(items) == 2_000
    with db.session() as s:
        start = time.perf_counter()
        batch = batch_app.create_batch(s, None, items, api_key_id="alice", settings=settings(tmp_path)).batch
        took = time.perf_counter() - start
        assert batch_db.counts_by_state(s, batch.id) == {JobState.QUEUED: 2_000}
    print(f"2000 items: {took:.2f} s on {db.engine.dialect.name}")
    assert took < 30


def test_the_fast_path_still_checks_every_item(db: Database, tmp_path: Path) -> None:
    """10,000 items alike but for item 7,321's parameter: the batch is refused naming that item, nothing written
    (what is validated once per template and shape must not skip an item's own values)."""
    ids = frames(db, 4)
    items = [rules.Item(i, UPSCALE, {"image": ids[i % 4], "resize": 9.0 if i == 7_321 else 0.5})
             for i in range(10_000)]
    with db.session() as s, pytest.raises(InvalidInput) as exc:
        batch_app.create_batch(s, None, items, api_key_id="alice", settings=settings(tmp_path))
    assert "1 of 10000 batch items are invalid (items 7321)" in exc.value.message
    assert [(e["item"], e["param"]) for e in exc.value.extra["errors"]] == [(7_321, "resize")]
    with db.session() as s:
        assert count(s, Batch) == count(s, Job) == count(s, JobEvent) == 0


def test_a_rerun_with_every_item_skipped_writes_no_empty_batch(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 3)
    items = upscales(ids)
    keys = [f"all/{i}" for i in ids]
    with db.session() as s:
        first = batch_app.create_batch(s, None, items, api_key_id="alice", keys=keys, settings=settings(tmp_path))
        before = (count(s, Batch), count(s, Job), count(s, JobEvent), count(s, AuditEvent))
        again = batch_app.create_batch(s, None, items, api_key_id="alice", keys=keys, settings=settings(tmp_path))
        assert not again.written and again.batch is not None and again.batch.id == first.batch.id
        assert sorted(again.skipped) == [0, 1, 2]
        assert (count(s, Batch), count(s, Job), count(s, JobEvent), count(s, AuditEvent)) == before
        # jobs of two batches (or none): no batch to answer with
        job_app.submit_job(s, None, UPSCALE, {"image": ids[0], "resize": 2.0}, api_key_id="alice",
                           settings=settings(tmp_path), idempotency_key="alone", request_hash=batch_app.item_hash(
                               rules.Item(0, UPSCALE, {"image": ids[0], "resize": 2.0})))
        mixed = batch_app.create_batch(s, None, [items[0], rules.Item(1, UPSCALE, {"image": ids[0], "resize": 2.0})],
                                       api_key_id="alice", keys=[keys[0], "alone"], settings=settings(tmp_path))
        assert mixed.batch is None and not mixed.written and not mixed.dry_run and len(mixed.skipped) == 2
        assert count(s, Batch) == before[0]


def test_a_whole_batch_idempotency_key_answers_the_same_batch(db: Database, tmp_path: Path) -> None:
    ids = frames(db, 2)
    items = upscales(ids)
    with db.session() as s:
        first = batch_app.create_batch(s, None, items, api_key_id="alice", idempotency_key="run-7",
                                       request_hash="h1", settings=settings(tmp_path))
        assert first.written and first.batch.idempotency_key == "run-7"
        before = (count(s, Batch), count(s, Job))
        again = batch_app.create_batch(s, None, items, api_key_id="alice", idempotency_key="run-7",
                                       request_hash="h1", settings=settings(tmp_path))
        assert again.replayed and not again.written and again.batch.id == first.batch.id
        assert (count(s, Batch), count(s, Job)) == before
        with pytest.raises(InvalidInput, match="Idempotency-Key 'run-7' was used for batch"):
            batch_app.create_batch(s, None, items, api_key_id="alice", idempotency_key="run-7", request_hash="h2",
                                   settings=settings(tmp_path))
        other_key = batch_app.create_batch(s, None, items, api_key_id="bob", idempotency_key="run-7",
                                           request_hash="h1", settings=settings(tmp_path))
        assert other_key.written and other_key.batch.id != first.batch.id  # the key is per api key
        s.add(Batch(api_key_id="alice", idempotency_key="run-7", request_hash="h1"))
        with pytest.raises(IntegrityError):  # the unique constraint, not only the lookup
            s.flush()


def test_bulk_rows_round_trip_and_postgresql_copies_them(db: Database, tmp_path: Path) -> None:
    """What ``insert_rows`` writes reads back as an INSERT would have written it (JSON, enum, UTC times,
    inputs, events); on PostgreSQL the jobs go in by COPY (no INSERT INTO jobs), and a duplicate key is
    SQLAlchemy's IntegrityError as for an INSERT."""
    ids = frames(db, 2)
    items = [rules.Item(0, UPSCALE, {"image": ids[0], "resize": 0.5}),
             rules.Item(1, UPSCALE, {"image": ids[1], "resize": 2.0})]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        with db.session() as s:
            created = batch_app.create_batch(s, None, items, api_key_id="alice", keys=["k\\0", "k\\n1"],
                                             settings=settings(tmp_path))
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    inserts = [st for st in statements if st.lstrip().upper().startswith("INSERT INTO JOBS")]
    assert (inserts == []) == (db.engine.dialect.name == "postgresql"), inserts
    with db.session() as s:
        jobs = batch_db.batch_jobs(s, created.batch.id)
        assert [(j.params["image"], j.params["resize"], j.state, j.idempotency_key) for j in jobs] == [
            (ids[0], 0.5, JobState.QUEUED, "k\\0"), (ids[1], 2.0, JobState.QUEUED, "k\\n1")]
        assert all(j.queued_at.utcoffset() is not None and j.error is None for j in jobs)
        assert jobs[0].queued_at < jobs[1].queued_at
        assert {(i.job_id, i.artifact_id) for i in s.exec(select(JobInput))} == {(jobs[0].id, ids[0]),
                                                                                 (jobs[1].id, ids[1])}
        evs = list(s.exec(select(JobEvent).where(JobEvent.job_id == jobs[0].id)))
        assert [(e.state, e.data["batch"]) for e in evs] == [(JobState.QUEUED, created.batch.id)]
        row = {c.name: getattr(jobs[0], c.name) for c in Job.__table__.c} | {"batch_item": 5}
        with pytest.raises(IntegrityError):
            batch_db.insert_rows(s, Job, [row])


def test_the_shape_memo_tells_true_from_one_and_a_string_from_a_number(db: Database, tmp_path: Path) -> None:
    """``True == 1 == 1.0`` in Python, but the parameter model refuses ``True`` and ``"1"`` for a float: an item
    after one of an equal value of another type is still refused."""
    ids = frames(db, 1)
    items = [rules.Item(i, UPSCALE, {"image": ids[0], "resize": v}) for i, v in enumerate([1.0, 1, True, "1"])]
    with db.session() as s, pytest.raises(InvalidInput) as exc:
        batch_app.create_batch(s, None, items, api_key_id="alice", settings=settings(tmp_path), dry_run=True)
    assert "2 of 4 batch items are invalid (items 2, 3)" in exc.value.message
