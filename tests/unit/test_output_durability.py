"""An output's object is durable and visible under its key before the commit of the row that names it, even
though it is made durable in another thread while the rows are written (``Executor.finish``); a store that
cannot make it durable leaves the job unfinished for crash recovery, with no row naming a missing object."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from orchestrator.core.states import JobState
from storage import LocalDiskStore, StoredObject
from storage.local import LocalPending
from tests.fakes.engine import Engine, start_engine


class SlowPending(LocalPending):
    delay = 0.3
    fail = False

    def commit(self) -> StoredObject:
        time.sleep(self.delay)
        if self.fail:
            raise OSError("disk full")
        return super().commit()


class SlowStore(LocalDiskStore):
    def stage_stream(self, chunks: Iterable[bytes]) -> LocalPending:
        p = super().stage_stream(chunks)
        return SlowPending(self, p.tmp, p.obj)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = start_engine(tmp_path)
    e.store = e.executor.store = SlowStore(tmp_path / "objects")
    yield e
    e.close()


def test_the_row_commits_only_after_its_object_is_durable(engine: Engine) -> None:
    job_id = engine.job()
    attempt_id = engine.attempt(job_id)
    seen: list[tuple[JobState, bool]] = []

    def watch() -> None:  # what another reader sees while the attempt ends
        for _ in range(200):
            arts = engine.artifacts(job_id)
            seen.append((engine.get(job_id).state, all(engine.store.exists(a.key) for a in arts)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert engine.executor.execute(attempt_id, engine.server()) == JobState.SUCCEEDED
    watcher.join()
    assert all(present for state, present in seen if state == JobState.SUCCEEDED)
    [art] = engine.artifacts(job_id)
    assert engine.store.exists(art.key) and not list((engine.store.root / "tmp").iterdir())


def test_an_object_that_cannot_be_made_durable_leaves_no_row(engine: Engine) -> None:
    SlowPending.fail = True
    try:
        job_id = engine.job()
        attempt_id = engine.attempt(job_id)
        with pytest.raises(OSError, match="disk full"):
            engine.executor.execute(attempt_id, engine.server())
    finally:
        SlowPending.fail = False
    assert engine.get(job_id).state == JobState.RUNNING  # left to crash recovery: its lease lapses, it is adopted
    assert engine.artifacts(job_id) == []
