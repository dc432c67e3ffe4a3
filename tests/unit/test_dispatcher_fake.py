"""Dispatcher.dispatch_once and crash recovery, through the real Executor, against fake ComfyUI servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.comfy.client import ComfyClient
from orchestrator.core import templates as tpl
from orchestrator.core.states import JobState
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.runtime.dispatcher import Dispatcher
from tests.fakes.comfy import Script
from tests.fakes.engine import Engine, start_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = start_engine(tmp_path, servers=2)
    yield e
    e.close()


@pytest.fixture
def dispatcher(engine: Engine) -> Iterator[Dispatcher]:
    d = Dispatcher(engine.db, engine.pool, engine.executor, engine.settings)
    yield d
    d.stop(timeout=2)


def test_dispatch_places_runs_and_stores(engine: Engine, dispatcher: Dispatcher) -> None:
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert job.state == JobState.SUCCEEDED, job.error
    [attempt] = engine.attempts(job_id)
    assert attempt.state == JobState.SUCCEEDED and attempt.owner == engine.executor.owner
    assert [a.attempt_id for a in engine.artifacts(job_id)] == [attempt.id]
    assert sum(len(f.submitted) for f in engine.fakes) == 1
    assert dispatcher.dispatch_once() == 0  # nothing left


def test_server_death_mid_prompt_moves_the_job_to_another_server(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, servers=2, retry_base_delay_s=0.5)  # a backoff a loaded machine cannot skip
    dispatcher = Dispatcher(engine.db, engine.pool, engine.executor, engine.settings)
    try:
        _server_death_mid_prompt(engine, dispatcher)
    finally:
        dispatcher.stop(timeout=2)
        engine.close()


def _server_death_mid_prompt(engine: Engine, dispatcher: Dispatcher) -> None:
    engine.fakes[0].script(Script(die_at=4))  # the shared script queue: whichever server gets it first dies
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    engine.wait(job_id, JobState.QUEUED, JobState.FAILED, JobState.SUCCEEDED)
    engine.wait(job_id, JobState.QUEUED)  # lost: queued again, with backoff
    [first] = engine.attempts(job_id)
    assert first.state == JobState.FAILED and first.abandoned
    assert engine.get(job_id).run_after is not None
    assert dispatcher.dispatch_once() == 0  # the backoff holds it for now
    deadline = time.monotonic() + 5
    while not dispatcher.dispatch_once():
        assert time.monotonic() < deadline, "the job was not dispatched again after its backoff"
        time.sleep(0.01)
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert job.state == JobState.SUCCEEDED, job.error
    first, second = engine.attempts(job_id)
    assert second.server != first.server and second.state == JobState.SUCCEEDED  # placed on the healthy one
    assert [a.attempt_id for a in engine.artifacts(job_id)] == [second.id]
    dead = next(f for f in engine.fakes if f.url == first.server)
    assert not dead.alive and not engine.pool.get(dead.url).healthy



def test_place_now_puts_a_job_behind_busy_servers_for_its_caller_to_run(engine: Engine,
                                                                        dispatcher: Dispatcher) -> None:
    """`medialab run`: the dispatcher's views, requirements and claim, on a server however busy (ComfyUI
    queues the prompt there), where a dispatch round waits for a free slot."""
    for index in (0, 1, 0, 1):  # every slot of both servers taken
        engine.attempt(engine.job(), index)
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 0  # a round waits for a free slot
    placed = dispatcher.place_now(job_id, reason="dispatched by medialab run")
    assert placed is not None and placed.job.id == job_id and placed.server.url in {f.url for f in engine.fakes}
    assert engine.get(job_id).state == JobState.RUNNING and "dispatched by medialab run" in engine.reasons(job_id)
    assert placed.attempt_id in engine.executor.held()  # its lease is renewed from the claim on
    assert placed.server.warm == placed.req.models  # noted for warm-model affinity, as a round does
    assert engine.executor.execute(placed.attempt_id, placed.server) == JobState.SUCCEEDED
    [attempt] = engine.attempts(job_id)
    assert attempt.id == placed.attempt_id and attempt.server == placed.server.url


def test_place_now_leaves_a_job_no_server_can_run_queued(engine: Engine, dispatcher: Dispatcher) -> None:
    job_id = engine.job(model="not-on-any-server.pth")
    assert dispatcher.place_now(job_id) is None
    assert engine.get(job_id).state == JobState.QUEUED and engine.attempts(job_id) == []

def _orphan(engine: Engine, index: int = 0) -> tuple[str, str]:
    """A job whose attempt a crashed orchestrator left RUNNING on server ``index``, its lease lapsed."""
    job_id = engine.job()
    return job_id, engine.attempt(job_id, index, owner="crashed-owner", lease_s=-1)


def _submit_as_the_crashed_process(engine: Engine, job_id: str, attempt_id: str, index: int = 0) -> None:
    fake = engine.fakes[index]
    with engine.db.session() as s:
        job = job_db.get_job(s, job_id)
        _row, t = template_db.get_template(s, job.template, job.version)
    client = ComfyClient(fake.url, transport=fake.transport)
    client.submit(tpl.bind(t, job.params), attempt_id, "crashed-owner-client")  # its events went to that socket
    client.close()


def test_recovery_ingests_a_prompt_that_finished_while_nobody_watched(engine: Engine, dispatcher: Dispatcher) -> None:
    job_id, attempt_id = _orphan(engine)
    _submit_as_the_crashed_process(engine, job_id, attempt_id)
    engine.fakes[0].wait_finished(attempt_id)
    assert dispatcher.recover() == 1
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    assert job.state == JobState.SUCCEEDED, job.error
    [attempt] = engine.attempts(job_id)  # the same attempt, adopted: never run twice
    assert attempt.owner == engine.executor.owner and engine.fakes[0].submitted == [attempt_id]
    assert [a.attempt_id for a in engine.artifacts(job_id)] == [attempt_id]
    assert "re-attached: finished while the orchestrator was down" in engine.reasons(job_id)


def test_recovery_follows_a_prompt_still_running(engine: Engine, dispatcher: Dispatcher) -> None:
    engine.fakes[0].script(Script(run_s=0.3))
    job_id, attempt_id = _orphan(engine)
    _submit_as_the_crashed_process(engine, job_id, attempt_id)
    engine.fakes[0].wait_running(attempt_id)
    assert dispatcher.recover() == 1
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    assert job.state == JobState.SUCCEEDED, job.error
    assert "re-attached to the running prompt" in engine.reasons(job_id)
    assert engine.fakes[0].submitted == [attempt_id] and len(engine.artifacts(job_id)) == 1


def test_recovery_queues_again_a_prompt_the_restarted_server_forgot(engine: Engine, dispatcher: Dispatcher) -> None:
    job_id, attempt_id = _orphan(engine)
    _submit_as_the_crashed_process(engine, job_id, attempt_id)
    engine.fakes[0].wait_finished(attempt_id)
    engine.fakes[0].restart()  # its history is gone with it
    assert dispatcher.recover() == 1
    job = engine.wait(job_id, JobState.QUEUED, timeout=5)
    [attempt] = engine.attempts(job_id)
    assert attempt.state == JobState.FAILED and not attempt.abandoned  # it answered: nothing to clean up
    assert "does not know prompt" in attempt.error["message"] and job.run_after is not None
    assert engine.artifacts(job_id) == []
