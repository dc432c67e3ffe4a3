"""The job table's claim and transition on both databases: SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import templates as template_app
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database, alembic_config
from orchestrator.db.tables import Job, now
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT
from storage import LocalDiskStore
from tests.conftest import png_bytes


@pytest.fixture
def db(any_db: Database) -> Database:
    return any_db


def queue_jobs(db: Database, n: int, tmp_path: Path) -> list[str]:
    versions = library.scan_library(PROJECT_ROOT / "comfy_workflows")
    with db.session() as s:
        template_app.sync_templates(s, versions)
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        return [job_app.create_job(s, row, t, {"image": frame.id, "model": "m"}, priority=i % 2).id
                for i in range(n)]


def claim(db: Database, owner: str = "test") -> str | None:
    """One dispatch claim as the dispatcher makes it: lock a candidate, start its attempt, commit."""
    with db.session() as s:
        for job in job_db.queued_candidates(s, limit=1):
            if attempt_db.start_attempt(s, job, "http://server", owner, 30.0):
                s.commit()
                return job.id
            s.rollback()
            return "lost"
    return None


def test_each_job_is_claimed_exactly_once(db: Database, tmp_path: Path) -> None:
    ids = queue_jobs(db, 12, tmp_path)
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (job_id := claim(db)) is not None:
            if job_id != "lost":
                with lock:
                    claimed.append(job_id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    with db.session() as s:
        assert all(job_db.get_job(s, i).state == JobState.RUNNING for i in ids)
        states = [e.state for e in job_db.events_after(s, ids[0]) if e.kind == "state"]
        attempts = attempt_db.job_attempts(s, ids[0])
    assert states == [JobState.QUEUED, JobState.RUNNING]
    assert [(a.number, a.owner, a.state) for a in attempts] == [(1, "test", JobState.RUNNING)]


def test_priority_then_age(db: Database, tmp_path: Path) -> None:
    ids = queue_jobs(db, 4, tmp_path)  # priorities 0, 1, 0, 1
    order = [claim(db) for _ in range(4)]
    assert order == [ids[1], ids[3], ids[0], ids[2]]


def test_ready_means_queued_of_its_kind_past_its_backoff_in_priority_then_queue_order(db: Database,
                                                                                     tmp_path: Path) -> None:
    ids = queue_jobs(db, 6, tmp_path)  # priorities 0, 1, 0, 1, 0, 1
    with db.session() as s:
        for i, values in [(1, {"run_after": now() + timedelta(hours=1)}),  # still backing off
                          (2, {"run_after": now() - timedelta(seconds=1)}),  # its backoff is over
                          (3, {"kind": "training"}), (4, {"state": JobState.CANCELLED})]:
            s.execute(update(Job).where(col(Job.id) == ids[i]).values(**values))
        s.commit()
        assert [j.id for j in s.exec(job_db.ready("comfy"))] == [ids[5], ids[0], ids[2]]
        assert [j.id for j in s.exec(job_db.ready("training"))] == [ids[3]]
        assert [j.id for j in job_db.queued_candidates(s)] == [ids[5], ids[0], ids[2]]
        assert [j.id for j in job_db.queued_candidates(s, limit=1)] == [ids[5]]
        assert job_db.any_ready(s, "comfy") and job_db.any_ready(s, "training")
        s.commit()
        s.execute(update(Job).where(col(Job.id).in_([ids[0], ids[2], ids[3], ids[5]])).values(state=JobState.FAILED))
        s.commit()
        assert not job_db.any_ready(s, "comfy") and not job_db.any_ready(s, "training")
        assert job_db.queued_candidates(s) == []


def test_transition_loses_the_race_cleanly(db: Database, tmp_path: Path) -> None:
    (job_id,) = queue_jobs(db, 1, tmp_path)
    with db.session() as s:
        assert job_db.transition(s, job_id, JobState.QUEUED, JobState.CANCELLED, "cancelled")
        s.commit()
        assert not job_db.transition(s, job_id, JobState.QUEUED, JobState.RUNNING, "too late")
        s.commit()  # the miss wrote nothing: no event, the state is the winner's
        job = job_db.get_job(s, job_id)
        assert job.state == JobState.CANCELLED and job.finished_at is not None
        assert [e.reason for e in job_db.events_after(s, job_id)] == ["submitted", "cancelled"]


def test_migrations_match_the_models(db: Database) -> None:
    """A model change without its alembic migration fails here (`alembic check` on both databases)."""
    cfg = alembic_config(db.engine)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)


def test_upgrading_a_populated_sqlite_database_keeps_every_row(tmp_path: Path) -> None:
    """A migration that alters a table on SQLite copies it and drops the old one; with rows of other tables
    naming it (job events, attempts, a pipeline run's steps) that failed with 'FOREIGN KEY constraint failed'
    and left a half-migrated database. Down to older revisions (foreign keys off, as the upgrade does it), then
    up again through every migration since, with the rows in place."""
    from orchestrator.app import pipelines as pipeline_app
    from orchestrator.db.engine import init_db
    from orchestrator.db.tables import JobEvent, PipelineRun, PipelineStep, PipelineVersionRow
    from orchestrator.runtime import pipeline_library

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    jobs = queue_jobs(db, 3, tmp_path)
    with db.session() as s:
        pipeline_app.sync_pipelines(s, pipeline_library.scan_pipelines(PROJECT_ROOT / "comfy_pipelines"))
        row = s.exec(select(PipelineVersionRow)).first()
        run = PipelineRun(pipeline_version_id=row.id, pipeline=row.name, version=row.version,
                          content_hash=row.content_hash, inputs={})
        s.add(run)
        s.flush()
        s.add(PipelineStep(run_id=run.id, step="a", template="upscale-esrgan", version=2, job_id=jobs[0]))
        s.commit()
    for revision in ("0009", "0005"):
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            with conn.begin():
                cfg = alembic_config(db.engine)
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, revision)
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
        init_db(db.engine)  # foreign keys enforced on its connection, as at every start
        with db.session() as s:
            assert len(s.exec(select(Job)).all()) == 3
            assert len(s.exec(select(JobEvent)).all()) >= 3
            assert s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert s.connection().exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    with db.session() as s:
        assert s.connection().exec_driver_sql("select version_num from alembic_version").scalar() == \
            ScriptDirectory.from_config(alembic_config(db.engine)).get_current_head()
