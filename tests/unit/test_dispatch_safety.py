"""The rules that keep one bad job, a restart or a dependency outage from stalling or losing work (no ComfyUI)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.app import admission
from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import templates as template_app
from orchestrator.bootstrap import process_owner
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.placement import ServerView, impossible_reason
from orchestrator.core.retry import RetryPolicy
from orchestrator.core.states import JobState, check_transition
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import servers as server_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Attempt, ServerRow, now
from orchestrator.runtime import library
from orchestrator.runtime.pool import MissingCapability
from orchestrator.settings import PROJECT_ROOT
from storage import LocalDiskStore
from tests.conftest import png_bytes

CORE = frozenset({"LoadImage", "SaveImage", "UpscaleModelLoader", "ImageUpscaleWithModel"})
UPSCALE = Requirements(CORE, frozenset({("upscale_models", "x4.pth")}))


def view(name: str, *, models: tuple[str, ...] = ("x4.pth",), known: bool = True, active: bool = True,
         healthy: bool = True) -> ServerView:
    caps = Capabilities(node_classes=CORE, models={"upscale_models": frozenset(models)}) if known else None
    return ServerView(name, f"http://{name}", healthy, active, caps)


def test_a_job_is_impossible_only_when_every_known_server_lacks_something() -> None:
    assert impossible_reason(UPSCALE, []) is None  # an empty pool decides nothing (a server may be added)
    assert impossible_reason(UPSCALE, [view("a", models=()), view("b", known=False)]) is None  # b may have it
    assert impossible_reason(UPSCALE, [view("a", models=()), view("b", healthy=False)]) is None  # b: just down
    assert impossible_reason(UPSCALE, [view("a", models=()), view("b", active=False)]) is None  # b: draining
    reason = impossible_reason(UPSCALE, [view("a", models=("other.pth",)), view("b", models=())])
    assert reason == ("no server can run this job: http://a lacks upscale_models/x4.pth (it has: other.pth); "
                      "http://b lacks upscale_models/x4.pth (it has: none)")


def test_a_queued_job_may_fail_but_never_succeed_without_running() -> None:
    check_transition(JobState.QUEUED, JobState.FAILED)
    with pytest.raises(Exception, match="cannot become SUCCEEDED"):
        check_transition(JobState.QUEUED, JobState.SUCCEEDED)


def test_waiting_for_a_dependency_backs_off_and_never_gives_up() -> None:
    policy = RetryPolicy(max_attempts=2, base_delay_s=1.0)
    assert [policy.wait_delay(n) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.wait_delay(10_000) == 60  # no overflow, no end
    assert policy.delay(1) == 1 and policy.delay(2) is None  # attempts that count do run out


def test_each_process_lifetime_has_its_own_identity() -> None:
    a, b = process_owner("x"), process_owner("x")
    assert a != b and a.startswith("x-") and b.startswith("x-")
    assert process_owner(None) != process_owner(None)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as s:
        template_app.sync_templates(s, library.scan_library(PROJECT_ROOT / "comfy_workflows"))
    return database


def _job(db: Database, tmp_path: Path, model: str = "x4.pth") -> str:
    with db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        return job_app.create_job(s, row, t, tpl.validate_params(t, {"image": frame.id, "model": model})).id


def test_heartbeat_renews_only_the_attempts_this_lifetime_follows(db: Database, tmp_path: Path) -> None:
    ids = [_job(db, tmp_path) for _ in range(2)]
    with db.session() as s:
        attempts = [attempt_db.start_attempt(s, job_db.get_job(s, i), "http://a", "me", 1.0) for i in ids]
        s.commit()
        past = now() - timedelta(seconds=5)
        for a in attempts:
            s.get(Attempt, a.id).lease_until = past
        s.commit()
        assert attempt_db.heartbeat(s, "me", 30.0, [attempts[0].id]) == 1
        assert attempt_db.heartbeat(s, "me", 30.0, []) == 0
        s.commit()
        s.expire_all()
        assert s.get(Attempt, attempts[0].id).lease_until.timestamp() > now().timestamp()
        orphans = attempt_db.adopt_orphans(s, "me-again", 30.0)  # the one nobody followed is adopted
        s.commit()
    assert [a.id for a in orphans] == [attempts[1].id]


def test_only_attempts_that_count_are_counted(db: Database, tmp_path: Path) -> None:
    job_id = _job(db, tmp_path)
    flags = [True, False, False]
    with db.session() as s:
        for counts in flags:
            a = attempt_db.start_attempt(s, job_db.get_job(s, job_id), "http://a", "me", 30.0)
            s.commit()
            assert attempt_db.finish_attempt(s, a.id, "me", JobState.FAILED, None, counts=counts)
            assert job_db.requeue(s, job_id, "again", 0.0)
            s.commit()
        assert attempt_db.counted_attempts(s, job_id) == 1
        assert attempt_db.waits_in_a_row(s, job_id, before=4) == 2
        assert attempt_db.waits_in_a_row(s, job_id, before=3) == 1
        assert attempt_db.waits_in_a_row(s, job_id, before=2) == 0


def test_abandoned_attempts_are_listed_per_server_until_cleared(db: Database, tmp_path: Path) -> None:
    job_id = _job(db, tmp_path)
    with db.session() as s:
        a = attempt_db.start_attempt(s, job_db.get_job(s, job_id), "http://a", "me", 30.0)
        s.commit()
        assert attempt_db.abandoned_attempts(s, "http://a") == []  # a running one is not abandoned
        assert attempt_db.finish_attempt(s, a.id, "me", JobState.FAILED, None, abandoned=True)
        s.commit()
        assert [x.id for x in attempt_db.abandoned_attempts(s, "http://a")] == [a.id]
        assert attempt_db.abandoned_attempts(s, "http://b") == []
        attempt_db.clear_abandoned(s, [a.id])
        s.commit()
        assert attempt_db.abandoned_attempts(s, "http://a") == []


def test_without_a_live_pool_the_recorded_capabilities_refuse_the_same_jobs(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        frame = artifact_app.store_input(s, LocalDiskStore(tmp_path / "objects"), png_bytes(8, 8), "f.png")
        params = {"image": frame.id, "model": "x4.pth"}
        admission.validate_job(s, None, "upscale-esrgan", params)  # nothing registered: serve/run start a worker
        s.add(ServerRow(name="new", url="http://new:8188"))
        s.commit()
        admission.validate_job(s, None, "upscale-esrgan", params)  # not probed yet: the live pool will decide
        s.delete(server_db.get_server(s, "new"))
        caps = Capabilities(node_classes=CORE | {"ImageScaleBy"}, models={"upscale_models": frozenset({"y.pth"})})
        s.add(ServerRow(name="gpu1", url="http://gpu1:8188", healthy=True, capabilities=caps.to_json()))
        s.commit()
        with pytest.raises(MissingCapability, match=r"http://gpu1:8188 lacks upscale_models/x4.pth \(it has: y.pth\)"):
            admission.validate_job(s, None, "upscale-esrgan", params)
        admission.validate_job(s, None, "upscale-esrgan", {**params, "model": "y.pth"})
