"""A database that fails is never a job's failure: whether a connection is lost (OperationalError,
InterfaceError), the pool is full (sqlalchemy's TimeoutError, not a DBAPIError) or a session is broken
(PendingRollbackError), an attempt that meets it is left RUNNING for crash recovery (not FAILED, and the error
does not escape ``Executor.execute``), and a dispatch round is retried instead of failing the job.

The errors are raised, once, by events of a real SQLite database: at a read inside the attempt (the template
lookup, the first statement of its session: where a full pool shows) and at the commit that ends it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlmodel import Session, select

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import templates as template_app
from orchestrator.core import templates as tpl
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import DB_ERRORS, Database
from orchestrator.db.tables import Attempt, Job, JobEvent, now
from orchestrator.runtime import library
from orchestrator.runtime.dispatcher import Dispatcher
from orchestrator.runtime.executor import Executor
from orchestrator.runtime.pool import Pool
from orchestrator.settings import PROJECT_ROOT, Settings
from storage import LocalDiskStore
from tests.conftest import png_bytes

OWNER = "me-1-abc"
ERRORS = {
    "connection lost": sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
    "interface": sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    "pool full": sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out, "
                                     "timeout 30.00"),
    "broken session": sa_exc.PendingRollbackError("This Session's transaction has been rolled back due to a "
                                                  "previous exception during flush."),
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as s:
        template_app.sync_templates(s, library.scan_library(PROJECT_ROOT / "comfy_workflows"))
    yield database
    database.engine.dispose()


@contextmanager
def fails_once(db: Database, at: str, error: Exception) -> Iterator[list[str]]:
    """The next read of the template_versions table (``at="read"``) or the next commit (``at="commit"``) raises
    ``error``, once; yields a list that holds where it was raised once it was."""
    raised: list[str] = []

    def on_read(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not raised and "FROM template_versions" in statement:
            raised.append(at)
            raise error

    def on_commit(session: Session) -> None:
        if not raised and session.get_bind() is db.engine:
            raised.append(at)
            raise error

    target, name, fn = (db.engine, "before_cursor_execute", on_read) if at == "read" else (
        Session, "before_commit", on_commit)
    event.listen(target, name, fn)
    try:
        yield raised
    finally:
        event.remove(target, name, fn)


def _running_job(db: Database, tmp_path: Path) -> tuple[str, str]:
    """A job RUNNING with an attempt owned by ``OWNER``: (job id, attempt id)."""
    with db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        job = job_app.create_job(s, row, t, tpl.validate_params(t, {"image": frame.id, "model": "x4.pth"}))
        attempt = attempt_db.start_attempt(s, job, "http://gpu1:8188", OWNER, 30.0)
        s.commit()
        return job.id, attempt.id


def test_db_errors_name_every_way_the_database_fails() -> None:
    for error in ERRORS.values():
        assert isinstance(error, DB_ERRORS)
    assert not isinstance(ValueError("a bug"), DB_ERRORS)


@pytest.mark.parametrize("at", ["read", "commit"])
@pytest.mark.parametrize("kind", list(ERRORS))
def test_a_database_error_leaves_the_attempt_to_crash_recovery(db: Database, tmp_path: Path, kind: str,
                                                              at: str) -> None:
    job_id, attempt_id = _running_job(db, tmp_path)
    if at == "commit":  # the job ends at once (its template version is gone): the commit that records it fails
        with db.session() as s:
            s.get(Job, job_id).template_version_id = None
            s.commit()
    executor = Executor(db, LocalDiskStore(tmp_path / "objects"), Settings(home=tmp_path / "home"), OWNER)
    with fails_once(db, at, ERRORS[kind]) as raised:
        # no server is needed: the attempt ends (or is let go) before anything is sent to one
        state = executor.execute(attempt_id, None, resume=False)  # type: ignore[arg-type]
    assert raised == [at]
    assert state == JobState.RUNNING
    assert executor.held() == []  # its lease is not renewed any more: it lapses
    with db.session() as s:
        job, attempt = s.get(Job, job_id), s.get(Attempt, attempt_id)
        assert (job.state, attempt.state, attempt.owner, attempt.finished_at) == (
            JobState.RUNNING, JobState.RUNNING, OWNER, None)
        assert not [e.reason for e in s.exec(select(JobEvent).where(JobEvent.job_id == job_id))
                    if "internal error" in e.reason]
        attempt.lease_until = now() - timedelta(seconds=1)
        s.commit()
        assert [a.id for a in attempt_db.adopt_orphans(s, "other-2-def", 30.0)] == [attempt_id]


@pytest.mark.parametrize("kind", list(ERRORS))
def test_a_database_error_in_a_dispatch_round_fails_no_job(db: Database, tmp_path: Path, kind: str) -> None:
    with db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        job_id = job_app.create_job(s, row, t, tpl.validate_params(t, {"image": frame.id, "model": "x4.pth"})).id
    settings = Settings(home=tmp_path / "home")
    executor = Executor(db, LocalDiskStore(tmp_path / "objects"), settings, OWNER)
    dispatcher = Dispatcher(db, Pool(db, "test"), executor, settings)
    try:
        # at the job's requirements (its template version): the round is dropped, the loop runs the next one
        with fails_once(db, "read", ERRORS[kind]) as raised, pytest.raises(type(ERRORS[kind])):
            dispatcher.dispatch_once()
        assert raised == ["read"]
        assert dispatcher.dispatch_once() == 0  # no server: the job waits
    finally:
        dispatcher.stop()
    with db.session() as s:
        assert s.get(Job, job_id).state == JobState.QUEUED
