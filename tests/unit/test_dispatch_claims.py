"""A dispatch round's claims in one pass (``attempts.start_attempts``), on SQLite and PostgreSQL: the guarantees
of one ``start_attempt`` each (state guard, attempt numbers, lease, events, bells), and replicas that never
consider the same queued job (SKIP LOCKED)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlmodel import select

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import templates as template_app
from orchestrator.core import templates as tpl
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Attempt, Job, JobEvent, now
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT
from storage import LocalDiskStore
from tests.conftest import png_bytes


def _jobs(db: Database, tmp_path: Path, n: int) -> list[str]:
    with db.session() as s:
        template_app.sync_templates(s, library.scan_library(PROJECT_ROOT / "comfy_workflows"))
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        return [job_app.create_job(s, row, t, tpl.validate_params(t, {"image": frame.id, "model": "x4.pth"})).id
                for _ in range(n)]


def test_a_round_claims_its_jobs_in_one_pass_with_every_guarantee(any_db: Database, tmp_path: Path) -> None:
    db = any_db
    ids = _jobs(db, tmp_path, 5)
    with db.session() as s:  # job 0 ran once before (its next attempt is number 2); job 1 ended meanwhile
        first = attempt_db.start_attempt(s, job_db.get_job(s, ids[0]), "http://a", "old", 30.0)
        assert first is not None
        s.commit()
        assert attempt_db.finish_attempt(s, first.id, "old", JobState.FAILED, None)
        assert job_db.requeue(s, ids[0], "again", 0.0)
        assert job_db.transition(s, ids[1], JobState.QUEUED, JobState.FAILED, "gone")
        s.execute(Job.__table__.update().where(Job.__table__.c.id == ids[2]).values(cancel_requested=True))
        s.commit()
    rung: list[str] = []
    unsubscribe = db.bell.subscribe(ids[3], lambda: rung.append(ids[3]))
    claims = [attempt_db.Claim(i, f"http://s{n % 2}", "me", 30.0, "v1", f"reason {n}", tier=n % 2, rate=0.5,
                               estimate=0.25)
              for n, i in enumerate(ids)]
    with db.session() as s:
        won = attempt_db.start_attempts(s, claims + [attempt_db.Claim(ids[4], "http://other", "me", 30.0)])
        assert not rung  # nothing rings before the commit
        s.commit()
    unsubscribe()
    assert rung == [ids[3]]
    assert sorted(won) == sorted([ids[0], ids[2], ids[3], ids[4]])  # the ended job is skipped
    with db.session() as s:
        for n, job_id in enumerate(ids):
            job = s.get(Job, job_id)
            attempts = attempt_db.job_attempts(s, job_id)
            if job_id == ids[1]:
                assert job.state == JobState.FAILED and attempts == []
                continue
            a = attempts[-1]
            assert job.state == JobState.RUNNING and job.started_at is not None and not job.cancel_requested
            assert (a.id, a.number, a.server, a.owner, a.state) == (won[job_id], 2 if n == 0 else 1,
                                                                    f"http://s{n % 2}", "me", JobState.RUNNING)
            assert (a.comfy_version, a.tier, a.rate, a.cost, a.error) == ("v1", n % 2, 0.5, 0.25, None)
            assert a.lease_until.timestamp() > now().timestamp() + 20
            event = s.exec(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.state == JobState.RUNNING)
                           .order_by(JobEvent.id.desc())).first()  # type: ignore[union-attr]
            assert event.reason == f"reason {n}"
            assert event.data == {"attempt": a.id, "number": a.number, "server": f"http://s{n % 2}"}
        assert attempt_db.inflight_by_server(s) == {"http://s0": 3, "http://s1": 1}  # jobs 0, 2, 4 and 3
    with db.session() as s:  # claimed again (another replica's stale plan): nothing is won twice
        assert attempt_db.start_attempts(s, claims) == {}
        s.commit()
        assert len(s.exec(select(Attempt)).all()) == 5


def test_many_claims_span_statements_and_the_candidates_of_one_replica_are_locked(any_db: Database,
                                                                                 tmp_path: Path) -> None:
    db = any_db
    ids = _jobs(db, tmp_path, attempt_db.CLAIM_CHUNK + 20)
    with db.session() as mine:
        seen = {j.id for j in job_db.queued_candidates(mine, limit=len(ids))}
        assert seen == set(ids)
        if db.engine.dialect.name == "postgresql":  # another replica's round skips the locked rows
            with db.session() as other:
                assert job_db.queued_candidates(other, limit=len(ids)) == []
        statements: list[str] = []
        listen = (db.engine, "before_cursor_execute", lambda *a: statements.append(a[2].split()[0]))
        event.listen(*listen)
        won = attempt_db.start_attempts(mine, [attempt_db.Claim(i, "http://a", "me", 30.0) for i in ids])
        mine.commit()
        event.remove(*listen)
    # per chunk of claims: the attempt numbers, one UPDATE of the jobs, one INSERT of attempts, one of events
    assert statements.count("UPDATE") == 2 and statements.count("INSERT") == 4, statements
    assert len(won) == len(ids) and len(set(won.values())) == len(ids)
    with db.session() as s:
        assert attempt_db.inflight_by_server(s) == {"http://a": len(ids)}
        assert job_db.queued_candidates(s) == []


def test_the_warm_models_replicas_share_come_from_the_job_started_last_on_each_server(any_db: Database,
                                                                                     tmp_path: Path) -> None:
    db = any_db
    ids = _jobs(db, tmp_path, 3)
    with db.session() as s:
        attempt_db.start_attempts(s, [attempt_db.Claim(ids[0], "http://a", "replica0", 30.0)])
        s.commit()
        attempt_db.start_attempts(s, [attempt_db.Claim(ids[1], "http://a", "replica1", 30.0),
                                      attempt_db.Claim(ids[2], "http://b", "replica1", 30.0)])
        s.commit()
        latest = attempt_db.latest_running_jobs(s)
        jobs = {i: s.get(Job, i) for i in ids}
    assert latest == {"http://a": (jobs[ids[1]].template_version_id, jobs[ids[1]].params),
                      "http://b": (jobs[ids[2]].template_version_id, jobs[ids[2]].params)}
