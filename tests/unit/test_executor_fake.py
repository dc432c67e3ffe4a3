"""The real Executor against fake ComfyUI servers (tests/fakes/comfy.py): every path of an attempt, in milliseconds."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.app import jobs as job_app
from orchestrator.core.states import JobState
from tests.fakes.comfy import Script
from tests.fakes.engine import Engine, start_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = start_engine(tmp_path)
    yield e
    e.close()


def test_success_stores_each_output_once_with_its_lineage(engine: Engine) -> None:
    fake = engine.fakes[0]
    fake.script(Script(images=2))
    job_id = engine.job()
    attempt_id = engine.attempt(job_id)
    assert engine.executor.execute(attempt_id, engine.server()) == JobState.SUCCEEDED
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.SUCCEEDED and job.progress == 1.0
    assert attempt.state == JobState.SUCCEEDED and not attempt.abandoned
    arts = engine.artifacts(job_id)
    assert [a.origin for a in arts] == [f"output:{job_id}:4:0", f"output:{job_id}:4:1"]
    served = sorted(v for (kind, _sub, _name), v in fake.files.items() if kind == "output")
    assert sorted(read(engine, a.key) for a in arts) == served  # the very bytes /view served, once each
    assert fake.asked("GET", "/view") == 2
    for a in arts:
        assert a.sha256 == hashlib.sha256(read(engine, a.key)).hexdigest()
        assert (a.role, a.job_id, a.attempt_id, a.output_name) == ("output", job_id, attempt_id, "upscaled")
        assert (a.template, a.template_version, a.server, a.comfy_version) == (
            "upscale-esrgan", 1, fake.url, "0.3.75")
        assert a.input_artifacts == [engine.inputs[job_id]] and a.params["model"] == "x4.pth"
        assert (a.content_type, a.width, a.height) == ("image/png", 16, 12)
    assert fake.submitted == [attempt_id]  # our attempt id is the prompt id
    [(sub, name)] = fake.uploads
    assert sub == "medialab" and name.endswith(".png")  # the input went up through the server's upload route
    assert engine.reasons(job_id)[-1] == "2 output(s) stored"


def test_node_error_fails_the_job_naming_the_node_without_a_retry(engine: Engine) -> None:
    engine.fakes[0].script(Script(outcome="error", exception_type="FileNotFoundError",
                                  exception_message="x4.pth not found"))
    job_id = engine.job()
    assert engine.executor.execute(engine.attempt(job_id), engine.server()) == JobState.FAILED
    job, attempts = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.FAILED and len(attempts) == 1 and job.run_after is None
    assert job.error["message"] == ("node 'Upscale' (#3 ImageUpscaleWithModel) failed: "
                                    "FileNotFoundError: x4.pth not found")
    assert (job.error["node_id"], job.error["node_type"]) == ("3", "ImageUpscaleWithModel")
    assert engine.artifacts(job_id) == []


def test_a_lost_websocket_is_reconciled_through_history(engine: Engine) -> None:
    fake = engine.fakes[0]
    fake.script(Script(lose_socket_at=3))  # nothing after execution_start, cached and one executing arrives
    job_id = engine.job()
    assert engine.executor.execute(engine.attempt(job_id), engine.server()) == JobState.SUCCEEDED
    assert fake.asked("GET", f"/history/{engine.attempts(job_id)[0].id}") >= 1  # only /history could tell
    assert len(engine.artifacts(job_id)) == 1 and engine.get(job_id).state == JobState.SUCCEEDED
    assert not any(e.kind == "progress" for e in engine.events(job_id))  # its events were indeed lost


def test_server_death_mid_prompt_requeues_with_backoff_and_abandons_the_prompt(engine: Engine) -> None:
    engine.fakes[0].script(Script(die_at=4))
    job_id = engine.job()
    srv = engine.server()
    assert engine.executor.execute(engine.attempt(job_id), srv) == JobState.QUEUED
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.QUEUED and job.run_after is not None
    assert attempt.state == JobState.FAILED and attempt.abandoned and attempt.counts  # removed once it answers
    assert attempt.error["transient"] and "retrying in" in engine.reasons(job_id)[-1]
    assert not srv.healthy and srv.cleanup_due  # the pool knows, and will clean up


def test_history_that_says_nothing_while_queue_lists_it_keeps_following(engine: Engine) -> None:
    fake = engine.fakes[0]
    fake.script(Script(events=False, run_s=0.6))  # a silent socket: only /history ({}) and /queue tell
    job_id = engine.job()
    attempt_id = engine.attempt(job_id)
    assert engine.executor.execute(attempt_id, engine.server()) == JobState.SUCCEEDED
    assert fake.asked("GET", f"/history/{attempt_id}") >= 3 and fake.asked("GET", "/queue") >= 2
    assert len(engine.artifacts(job_id)) == 1 and len(engine.attempts(job_id)) == 1


def test_cancel_interrupts_by_prompt_id(engine: Engine) -> None:
    fake = engine.fakes[0]
    fake.script(Script(outcome="hang"))
    job_id = engine.job()
    attempt_id = engine.attempt(job_id)
    result: list[JobState] = []
    runner = threading.Thread(target=lambda: result.append(engine.executor.execute(attempt_id, engine.server())))
    runner.start()
    fake.wait_running(attempt_id)
    with engine.db.session() as s:
        assert job_app.cancel_job(s, job_id).state == JobState.RUNNING  # flagged; the executor stops it
    runner.join(5)
    assert result == [JobState.CANCELLED] and engine.get(job_id).state == JobState.CANCELLED
    assert fake.interrupts == [attempt_id]  # never a bare interrupt
    assert "interrupting: cancelled" in engine.reasons(job_id)
    assert fake.history[attempt_id]["status"]["messages"][-1][0] == "execution_interrupted"


def test_a_prompt_that_never_ends_times_out(engine: Engine) -> None:
    fake = engine.fakes[0]
    fake.script(Script(outcome="hang"))
    job_id = engine.job(timeout_s=0.3)
    attempt_id = engine.attempt(job_id)
    assert engine.executor.execute(attempt_id, engine.server()) == JobState.FAILED
    job = engine.get(job_id)
    assert "timed out" in job.error["message"] and fake.interrupts == [attempt_id]
    assert len(engine.attempts(job_id)) == 1



def read(engine: Engine, key: str) -> bytes:
    with engine.store.open(key) as f:
        return f.read()


def test_a_shutdown_under_a_running_attempt_leaves_it_to_the_next_process(engine: Engine) -> None:
    engine.fakes[0].script(Script(run_s=1.0))
    job_id = engine.job()
    attempt_id = engine.attempt(job_id)
    result: list[JobState] = []
    runner = threading.Thread(target=lambda: result.append(engine.executor.execute(attempt_id, engine.server())))
    runner.start()
    engine.fakes[0].wait_running(attempt_id)
    engine.executor.stop()  # what Context.close does first
    engine.pool.close()  # the clients and sockets close under the attempt
    runner.join(10)
    assert result == [JobState.RUNNING]
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.RUNNING and attempt.state == JobState.RUNNING  # adopted by the next process
    assert "internal error" not in " ".join(engine.reasons(job_id))
