"""Inputs already on a server are not sent again, and an input just uploaded is sent ahead of its job
(runtime/staging.py), against fake ComfyUI servers (tests/fakes/comfy.py) that check input files as ComfyUI does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from tests.fakes.engine import Engine, start_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = start_engine(tmp_path)
    e.fakes[0].check_inputs = True
    yield e
    e.close()


def run(engine: Engine, job_id: str) -> JobState:
    return engine.executor.execute(engine.attempt(job_id), engine.server())


def uploads(engine: Engine) -> int:
    return engine.fakes[0].asked("POST", "/upload/image")


def test_an_input_the_server_holds_is_not_sent_again(engine: Engine) -> None:
    first = engine.job()
    assert run(engine, first) == JobState.SUCCEEDED
    second = engine.job(image=engine.inputs[first])  # the same input, another job (a batch's restyles)
    assert run(engine, second) == JobState.SUCCEEDED
    assert uploads(engine) == 1
    assert engine.executor.bytes_through > 0  # the one upload and the outputs count


def test_a_new_websocket_session_forgets_what_the_server_held(engine: Engine) -> None:
    first = engine.job()
    assert run(engine, first) == JobState.SUCCEEDED
    monitor = engine.server().monitor
    before = monitor.sessions
    engine.fakes[0].restart()  # sockets close; the monitor reconnects: perhaps a new server behind the URL
    deadline = time.monotonic() + 5
    while (monitor.sessions == before or not monitor.connected.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert monitor.sessions > before
    assert run(engine, engine.job(image=engine.inputs[first])) == JobState.SUCCEEDED
    assert uploads(engine) == 2


def test_a_held_file_that_is_gone_is_sent_again_and_the_prompt_resubmitted(engine: Engine) -> None:
    first = engine.job()
    assert run(engine, first) == JobState.SUCCEEDED
    engine.fakes[0].clear_inputs()  # emptied behind our back, same websocket session
    second = engine.job(image=engine.inputs[first])
    assert run(engine, second) == JobState.SUCCEEDED
    assert uploads(engine) == 2
    assert engine.fakes[0].asked("POST", "/prompt") == 3  # one refused for the missing file, then resubmitted


def test_an_input_is_sent_ahead_and_the_attempt_finds_it(engine: Engine) -> None:
    job_id = engine.job()
    with engine.db.session() as s:
        art = artifact_db.get_artifact(s, engine.inputs[job_id])
    assert engine.executor.staging.ahead(art) == 1
    deadline = time.monotonic() + 5
    while uploads(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert run(engine, job_id) == JobState.SUCCEEDED
    assert uploads(engine) == 1  # sent ahead, not again by the attempt


def test_nothing_is_sent_ahead_to_a_larger_pool_or_when_disabled(tmp_path: Path) -> None:
    e = start_engine(tmp_path, servers=3)
    try:
        job_id = e.job()
        with e.db.session() as s:
            art = artifact_db.get_artifact(s, e.inputs[job_id])
        assert e.executor.staging.ahead(art) == 0  # 3 servers > stage_ahead_servers (2): placed first
        e.executor.staging.ahead_servers = 0
        e.executor.staging.pool = e.pool
        assert e.executor.staging.ahead(art) == 0
    finally:
        e.close()
