"""Burst tiers through the real engine: ``Dispatcher.dispatch_once`` (local first, then bursts) and ``ProviderRunner``
(``Executor.execute`` on a provider's attempt), against fake ComfyUI (tests/fakes/comfy.py) and a fake provider
behind our ``Provider`` protocol (tests/fakes/provider.py), in milliseconds."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app import jobs as job_app
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db.tables import Attempt, ServerRow
from orchestrator.runtime import provider_runner as remote_runtime
from orchestrator.runtime.dispatcher import Dispatcher
from tests.fakes.comfy import Script
from tests.fakes.engine import Engine, start_engine
from tests.fakes.provider import FakeProvider, RemoteScript

BURST = {"max_inflight": 1, "burst_templates": ["upscale-esrgan"], "burst_wait_s": 0.0, "burst_poll_s": 0.01,
         "burst_unreachable_s": 0.2}
"""One local slot, upscale-esrgan allowed to burst at once, the provider polled every 10 ms."""
ESTIMATE = 0.5 * 60.0  # rate x (cold start 0 + burst_default_run_s 60): the template never ran locally


def make(tmp_path: Path, **settings: Any) -> Engine:
    return start_engine(tmp_path, **{**BURST, **settings})


def drain(engine: Engine, timeout: float = 5.0) -> None:
    """Let every provider job end and wait for the runners that follow them (no thread outlives a test)."""
    deadline = time.monotonic() + timeout
    while engine.executor.held():
        for fake in engine.remotes:
            fake.speak()
            fake.release()
        assert time.monotonic() < deadline, f"attempts still followed: {engine.executor.held()}"
        time.sleep(0.01)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make(tmp_path)
    yield e
    e.close()


@pytest.fixture
def cloud(engine: Engine) -> FakeProvider:
    fake = FakeProvider("https://cloud-a.test")
    engine.add_provider(fake, "cloud", tier=1, rate=0.5)
    return fake


def dispatcher_for(engine: Engine) -> Dispatcher:
    return Dispatcher(engine.db, engine.pool, engine.executor, engine.settings)


@pytest.fixture
def dispatcher(engine: Engine) -> Iterator[Dispatcher]:
    d = dispatcher_for(engine)
    yield d
    drain(engine)
    d.stop(timeout=2)


def saturate(engine: Engine) -> str:
    """The local server's one slot taken by a claimed attempt (in flight as the database counts it)."""
    job_id = engine.job()
    engine.attempt(job_id, 0)
    return job_id


def wait_for(cond: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met in {timeout}s"
        time.sleep(0.005)


# -- dispatch: who bursts, where to ------------------------------------------------------------------
def test_an_allowed_job_bursts_while_local_is_saturated(engine: Engine, cloud: FakeProvider,
                                                        dispatcher: Dispatcher) -> None:
    fake = engine.fakes[0]
    fake.script(Script(outcome="hang"))  # the local job holds the only local slot
    local_job = engine.job()
    assert dispatcher.dispatch_once() == 1
    [local_attempt] = engine.attempts(local_job)
    fake.wait_running(local_attempt.id)
    cloud.script(RemoteScript(outcome="hang"))
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    wait_for(lambda: cloud.by_key(engine.attempts(job_id)[0].id) is not None, what="the provider got the job")
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.RUNNING and attempt.server == engine.provider().url
    assert (attempt.tier, attempt.rate, attempt.cost) == (1, 0.5, pytest.approx(ESTIMATE))  # held while running
    [burst_event] = [r for r in engine.reasons(job_id) if r.startswith("burst to ")]
    assert burst_event.startswith("burst to cloud: local wait ~60s > 0s; estimated cost 30.00")
    assert fake.submitted == [local_attempt.id]  # nothing more went to the saturated local server
    cloud.release()
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    assert job.state == JobState.SUCCEEDED, job.error
    [attempt] = engine.attempts(job_id)
    assert attempt.cost == pytest.approx(0.5 * attempt.gpu_s) and attempt.cost < ESTIMATE  # the estimate let go
    with engine.db.session() as s:
        job_app.cancel_job(s, local_job)
    engine.wait(local_job, JobState.CANCELLED)


def test_a_template_not_on_the_allowlist_stays_queued(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_templates=["upscale-other"])
    cloud = FakeProvider()
    engine.add_provider(cloud, "cloud")
    d = dispatcher_for(engine)
    try:
        saturate(engine)
        job_id = engine.job()
        assert d.dispatch_once() == 0
        assert engine.get(job_id).state == JobState.QUEUED and cloud.submits == []
        assert not any("burst" in r for r in engine.reasons(job_id))
    finally:
        d.stop(timeout=2)
        engine.close()


def test_a_wait_within_the_threshold_stays_queued(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_wait_s=3600.0)  # the estimated local wait is 60 s
    cloud = FakeProvider()
    engine.add_provider(cloud, "cloud")
    d = dispatcher_for(engine)
    try:
        saturate(engine)
        job_id = engine.job()
        assert d.dispatch_once() == 0
        assert engine.get(job_id).state == JobState.QUEUED and cloud.submits == []
        assert engine.attempts(job_id) == []
    finally:
        d.stop(timeout=2)
        engine.close()


def test_an_idle_local_server_takes_an_allowed_job(engine: Engine, cloud: FakeProvider, dispatcher: Dispatcher) -> None:
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    assert job.state == JobState.SUCCEEDED, job.error
    [attempt] = engine.attempts(job_id)
    assert attempt.server == engine.fakes[0].url and attempt.tier == 0 and attempt.cost == 0.0
    assert cloud.submits == [] and engine.fakes[0].submitted == [attempt.id]


def test_a_budget_below_one_estimate_keeps_the_job_local_with_one_event(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_budget_day=1.0)  # one burst is estimated at 30
    cloud = FakeProvider()
    engine.add_provider(cloud, "cloud")
    d = dispatcher_for(engine)
    try:
        saturate(engine)
        job_id = engine.job()
        for _ in range(4):  # every round decides again; the event is said once
            assert d.dispatch_once() == 0
        assert engine.get(job_id).state == JobState.QUEUED and cloud.submits == []
        said = [e for e in engine.events(job_id) if e.reason.startswith("not bursting")]
        assert [e.reason for e in said] == [
            "not bursting: the daily burst budget (1.00) is reached (spent 0.00, this job ~30.00); "
            "waiting for local capacity"]
        assert said[0].data == {"burst": "blocked", "estimate": 30.0}
    finally:
        d.stop(timeout=2)
        engine.close()


def test_running_bursts_hold_their_estimate_against_the_budget(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_budget_day=50.0)  # room for one estimate of 30, not two
    cloud = FakeProvider().script(RemoteScript(outcome="hang"))
    engine.add_provider(cloud, "cloud", max_inflight=5)
    d = dispatcher_for(engine)
    try:
        saturate(engine)
        first, second = engine.job(), engine.job()
        assert d.dispatch_once() == 1  # the first one's estimate counts within the round already
        assert engine.get(first).state == JobState.RUNNING and engine.get(second).state == JobState.QUEUED
        assert d.dispatch_once() == 0  # and in the next round, from the database (the attempt still runs)
        said = [r for r in engine.reasons(second) if r.startswith("not bursting")]
        assert said == ["not bursting: the daily burst budget (50.00) is reached (spent 30.00, this job ~30.00); "
                        "waiting for local capacity"]
    finally:
        drain(engine)
        d.stop(timeout=2)
        engine.close()


def test_an_urgent_job_bursts_past_a_high_threshold(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_wait_s=3600.0, burst_urgent_priority=50, burst_urgent_wait_s=0.0)
    cloud = FakeProvider()
    engine.add_provider(cloud, "cloud")
    d = dispatcher_for(engine)
    try:
        saturate(engine)
        calm, urgent = engine.job(priority=0), engine.job(priority=60)
        assert d.dispatch_once() == 1
        engine.wait(urgent, JobState.SUCCEEDED)
        assert engine.get(calm).state == JobState.QUEUED and len(cloud.submits) == 1
    finally:
        drain(engine)
        d.stop(timeout=2)
        engine.close()


def test_a_provider_lacking_the_model_is_not_chosen(engine: Engine, dispatcher: Dispatcher) -> None:
    lacking, having = FakeProvider("https://cheap.test"), FakeProvider("https://dear.test")
    engine.add_provider(lacking, "cheap", tier=1, rate=0.01, models={"upscale_models": ["x2.pth"]})
    engine.add_provider(having, "dear", tier=2, rate=0.9)
    saturate(engine)
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    assert engine.attempts(job_id)[0].server == "https://dear.test"
    engine.wait(job_id, JobState.SUCCEEDED)
    assert lacking.submits == [] and len(having.submits) == 1


def test_a_lower_tier_goes_first_even_when_dearer(engine: Engine, dispatcher: Dispatcher) -> None:
    tier2, tier1 = FakeProvider("https://tier2.test"), FakeProvider("https://tier1.test")
    engine.add_provider(tier2, "tier2", tier=2, rate=0.01)
    engine.add_provider(tier1, "tier1", tier=1, rate=0.9)
    saturate(engine)
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    [attempt] = engine.attempts(job_id)
    assert (attempt.server, attempt.tier, attempt.rate) == ("https://tier1.test", 1, 0.9)


def test_the_cheaper_of_one_tier_goes_first(engine: Engine, dispatcher: Dispatcher) -> None:
    dear, cheap = FakeProvider("https://a-dear.test"), FakeProvider("https://b-cheap.test")  # the URL order: dear first
    engine.add_provider(dear, "dear", tier=1, rate=0.5)
    engine.add_provider(cheap, "cheap", tier=1, rate=0.2)
    saturate(engine)
    job_id = engine.job()
    assert dispatcher.dispatch_once() == 1
    [attempt] = engine.attempts(job_id)
    assert (attempt.server, attempt.rate, attempt.cost) == ("https://b-cheap.test", 0.2, pytest.approx(12.0))


def test_a_local_only_job_never_bursts(engine: Engine, cloud: FakeProvider, dispatcher: Dispatcher) -> None:
    saturate(engine)
    job_id = engine.job(local_only=True)
    for _ in range(2):
        assert dispatcher.dispatch_once() == 0
    assert engine.get(job_id).state == JobState.QUEUED and cloud.submits == [] and engine.attempts(job_id) == []
    assert not any("burst" in r for r in engine.reasons(job_id))


def test_the_providers_max_inflight_is_respected(engine: Engine, dispatcher: Dispatcher) -> None:
    cloud = FakeProvider().script(*[RemoteScript(outcome="hang")] * 2)  # the third succeeds
    engine.add_provider(cloud, "cloud", max_inflight=2)
    saturate(engine)
    jobs = [engine.job() for _ in range(3)]
    assert dispatcher.dispatch_once() == 2  # two slots there; the third waits
    assert dispatcher.dispatch_once() == 0  # and still while both run
    states = [engine.get(j).state for j in jobs]
    assert states.count(JobState.RUNNING) == 2 and states.count(JobState.QUEUED) == 1
    [waiting] = [j for j, st in zip(jobs, states, strict=True) if st == JobState.QUEUED]
    said = [r for r in engine.reasons(waiting) if r.startswith("not bursting")]
    assert said == ["not bursting: no burst provider has a free slot (cloud full); waiting for local capacity"]
    wait_for(lambda: len(cloud.jobs) == 2, what="two jobs on the provider")
    running = [j for j in jobs if j != waiting]
    for j in running:
        cloud.release(cloud.by_key(engine.attempts(j)[0].id).id)
    for j in running:
        engine.wait(j, JobState.SUCCEEDED)
    assert dispatcher.dispatch_once() == 1  # a slot is free again
    engine.wait(waiting, JobState.SUCCEEDED)


# -- ProviderRunner: one attempt on a provider ---------------------------------------------------------
def test_success_stores_the_outputs_with_their_lineage_and_prices_the_reported_gpu_time(
        engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=2, images=2, gpu_s=3.0))
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id, estimate=ESTIMATE)
    recorded: list[str | None] = []

    def first_status(remote_id: str) -> None:
        if not recorded:
            with engine.db.session() as s:
                recorded.append(s.get(Attempt, attempt_id).remote_id)

    cloud.on_status = first_status
    srv = engine.provider()
    assert engine.executor.execute(attempt_id, srv) == JobState.SUCCEEDED
    [rjob] = cloud.jobs.values()
    assert recorded == [rjob.id]  # in the database before the job was asked about, let alone ended
    assert cloud.submits == [attempt_id] and rjob.key == attempt_id  # our attempt id is the idempotency key
    [(filename, size, sha, ctype, body)] = cloud.uploads
    art_in = engine.artifacts(job_id)  # nothing but outputs are linked to the job
    assert filename == f"{sha}.png" and ctype == "image/png" and size == len(body)
    assert rjob.graph["1"]["inputs"]["image"] == f"asset:{sha}"  # the upload's bind went into the graph
    assert rjob.graph["2"]["inputs"]["model_name"] == "x4.pth"
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.SUCCEEDED and job.progress == 1.0 and not job.local_only
    assert attempt.state == JobState.SUCCEEDED and attempt.remote_id == rjob.id
    assert (attempt.gpu_s, attempt.cost) == (3.0, pytest.approx(1.5))  # the provider's seconds x the rate
    assert [a.origin for a in art_in] == [f"output:{job_id}:4:0", f"output:{job_id}:4:1"]
    assert sorted(read(engine, a.key) for a in art_in) == sorted(o.ref for o in rjob.outputs)
    for a in art_in:
        assert (a.provider, a.remote_job_id, a.attempt_id, a.server) == ("cloud", rjob.id, attempt_id, cloud.url)
        assert (a.role, a.output_name, a.template, a.template_version) == ("output", "upscaled", "upscale-esrgan", 1)
        assert a.input_artifacts == [engine.inputs[job_id]] and (a.width, a.height) == (16, 12)
    reasons = engine.reasons(job_id)
    assert f"submitted to cloud as job {rjob.id}" in reasons and "cloud: running" in reasons
    assert reasons[-1] == "2 output(s) stored from cloud"
    assert cloud.cancels == [] and srv.healthy


def test_without_a_reported_gpu_time_the_elapsed_time_is_priced(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=3))
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    t0 = time.monotonic()
    assert engine.executor.execute(attempt_id, engine.provider()) == JobState.SUCCEEDED
    elapsed = time.monotonic() - t0
    [attempt] = engine.attempts(job_id)
    assert 0.0 < attempt.gpu_s <= elapsed + 0.5  # start to end, as the database saw them
    assert attempt.cost == pytest.approx(0.5 * attempt.gpu_s)


def test_a_provider_that_fails_the_job_hands_it_back_to_local(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(outcome="fail", error="CUDA out of memory", gpu_s=1.0))
    job_id = engine.job()
    srv = engine.provider()
    assert engine.executor.execute(engine.burst_attempt(job_id), srv) == JobState.QUEUED
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.QUEUED and job.local_only and attempt.state == JobState.FAILED
    assert not attempt.counts and attempt.error["transient"] and attempt.error["provider"] == "cloud"
    assert "CUDA out of memory" in attempt.error["message"] and attempt.cost == pytest.approx(0.5)
    assert engine.artifacts(job_id) == [] and srv.healthy  # the job failed there, not the provider
    assert "back to the queue for local servers" in engine.reasons(job_id)[-1]


def test_a_job_only_a_provider_can_run_counts_the_attempt_and_may_burst_again(engine: Engine) -> None:
    """No local server has its model: handing it to the local tier would fail it as impossible, so the failure is
    an attempt that counts (bounded by max_attempts) and the job stays free to burst."""
    cloud = FakeProvider("https://cloud-a.test")
    engine.add_provider(cloud, "cloud", tier=1, rate=0.5, models={"upscale_models": ["cloud-only.pth"]})
    cloud.script(RemoteScript(outcome="fail", error="worker crashed"))
    job_id = engine.job(model="cloud-only.pth")
    assert engine.executor.execute(engine.burst_attempt(job_id), engine.provider()) == JobState.QUEUED
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert not job.local_only and attempt.counts and attempt.state == JobState.FAILED
    assert "retrying in" in engine.reasons(job_id)[-1]


def test_a_provider_silent_longer_than_the_limit_is_marked_down(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=5, unreachable_at=2))  # silent for good from its second status call
    job_id = engine.job()
    srv = engine.provider()
    t0 = time.monotonic()
    assert engine.executor.execute(engine.burst_attempt(job_id), srv) == JobState.QUEUED
    assert time.monotonic() - t0 >= engine.settings.burst_unreachable_s
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.local_only and attempt.state == JobState.FAILED and not attempt.counts
    assert "did not answer for" in attempt.error["message"]
    assert not srv.healthy  # like a server that went away
    with engine.db.session() as s:
        assert not s.get(ServerRow, srv.id).healthy
    assert engine.artifacts(job_id) == []


def test_a_provider_silent_for_a_moment_is_followed_to_success(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=3, unreachable_at=2, unreachable_s=0.05))  # well within burst_unreachable_s
    job_id = engine.job()
    srv = engine.provider()
    assert engine.executor.execute(engine.burst_attempt(job_id), srv) == JobState.SUCCEEDED
    [rjob] = cloud.jobs.values()
    assert len(cloud.statuses) > rjob.polls  # some calls were not answered
    assert len(engine.artifacts(job_id)) == 1 and len(cloud.submits) == 1 and srv.healthy


def cancel_at(engine: Engine, job_id: str, call: int) -> Any:
    """An ``on_status`` hook asking the job's cancel (as the API does) at the provider's ``call``-th status call."""
    calls = []

    def hook(_remote_id: str) -> None:
        calls.append(1)
        if len(calls) == call:
            with engine.db.session() as s:
                assert job_app.cancel_job(s, job_id).state == JobState.RUNNING

    return hook


def test_a_cancel_the_provider_ignores_counts_the_cost_and_drops_the_outputs(engine: Engine,
                                                                              cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=4, ignore_cancel=True, gpu_s=2.0))
    job_id = engine.job()
    cloud.on_status = cancel_at(engine, job_id, 1)
    assert engine.executor.execute(engine.burst_attempt(job_id), engine.provider()) == JobState.CANCELLED
    [rjob] = cloud.jobs.values()
    assert cloud.cancels == [rjob.id] and rjob.state.value == "succeeded"  # asked once; it ran to its end
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.state == JobState.CANCELLED and attempt.state == JobState.CANCELLED
    assert (attempt.gpu_s, attempt.cost) == (2.0, pytest.approx(1.0))  # its GPU time is paid for all the same
    assert engine.artifacts(job_id) == [] and cloud.opened == []  # not even downloaded
    assert any(r.startswith("cancel asked: cancel asked of cloud") for r in engine.reasons(job_id))
    assert "ran to the end anyway; its outputs were dropped" in engine.reasons(job_id)[-1]


def test_a_cancel_the_provider_honours_ends_cancelled(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(outcome="hang"))
    job_id = engine.job()
    cloud.on_status = cancel_at(engine, job_id, 2)
    assert engine.executor.execute(engine.burst_attempt(job_id), engine.provider()) == JobState.CANCELLED
    assert len(cloud.cancels) == 1 and engine.artifacts(job_id) == []
    assert "ended cancelled" in engine.reasons(job_id)[-1]


def test_a_cancelled_job_the_provider_then_fails_ends_cancelled(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(polls=3, outcome="fail", ignore_cancel=True))
    job_id = engine.job()
    cloud.on_status = cancel_at(engine, job_id, 1)
    assert engine.executor.execute(engine.burst_attempt(job_id), engine.provider()) == JobState.CANCELLED
    job = engine.get(job_id)
    assert job.state == JobState.CANCELLED and not job.local_only and len(cloud.cancels) == 1


def test_keep_outputs_stores_what_a_cancelled_job_made_anyway(tmp_path: Path) -> None:
    engine = make(tmp_path, burst_cancel_keep_outputs=True)
    try:
        cloud = FakeProvider().script(RemoteScript(polls=3, ignore_cancel=True, gpu_s=2.0))
        engine.add_provider(cloud, "cloud")
        job_id = engine.job()
        cloud.on_status = cancel_at(engine, job_id, 1)
        state = engine.executor.execute(engine.burst_attempt(job_id), engine.provider())
        [rjob] = cloud.jobs.values()
        arts = engine.artifacts(job_id)
        assert len(cloud.cancels) == 1 and [a.remote_job_id for a in arts] == [rjob.id]  # kept, with lineage
        assert state == JobState.SUCCEEDED  # the outputs stand: the job ends as it ran
        assert engine.attempts(job_id)[0].cost == pytest.approx(1.0)
    finally:
        engine.close()


def test_resume_finds_the_job_by_its_key_instead_of_submitting_again(engine: Engine, cloud: FakeProvider) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    remote_id = cloud.preload(attempt_id, RemoteScript(polls=2))  # the crashed process's submit landed
    assert engine.attempts(job_id)[0].remote_id is None  # ... but it crashed before recording the answer
    assert engine.executor.execute(attempt_id, engine.provider(), resume=True) == JobState.SUCCEEDED
    assert cloud.submits == [] and cloud.finds == [attempt_id] and len(cloud.jobs) == 1
    assert [a.remote_job_id for a in engine.artifacts(job_id)] == [remote_id]
    assert f"re-attached to cloud's job {remote_id}" in engine.reasons(job_id)


def test_recovery_re_attaches_to_a_recorded_provider_job(engine: Engine, cloud: FakeProvider,
                                                        dispatcher: Dispatcher) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id, owner="crashed-owner", lease_s=-1)  # its orchestrator died
    remote_id = cloud.preload(attempt_id, RemoteScript(polls=2))
    with engine.db.session() as s:
        attempt_db.set_remote_id(s, attempt_id, remote_id)  # recorded before the crash
        s.commit()
    assert dispatcher.recover() == 1
    job = engine.wait(job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    assert job.state == JobState.SUCCEEDED, job.error
    [attempt] = engine.attempts(job_id)  # the same attempt, adopted: the work never sent twice
    assert attempt.owner == engine.executor.owner and cloud.submits == [] and cloud.finds == []
    assert [a.remote_job_id for a in engine.artifacts(job_id)] == [remote_id]


def test_resume_records_the_job_id_it_found(engine: Engine, cloud: FakeProvider) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    remote_id = cloud.preload(attempt_id, RemoteScript(polls=1))
    assert engine.executor.execute(attempt_id, engine.provider(), resume=True) == JobState.SUCCEEDED
    assert engine.attempts(job_id)[0].remote_id == remote_id


def test_resume_submits_when_the_provider_has_no_job_under_the_key(engine: Engine, cloud: FakeProvider) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    assert engine.executor.execute(attempt_id, engine.provider(), resume=True) == JobState.SUCCEEDED
    assert cloud.finds == [attempt_id] and cloud.submits == [attempt_id] and len(cloud.jobs) == 1


def test_key_already_used_on_submit_follows_the_job_found(engine: Engine, cloud: FakeProvider) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    remote_id = cloud.preload(attempt_id)  # an earlier submit under this key landed; its answer never came
    assert engine.executor.execute(attempt_id, engine.provider()) == JobState.SUCCEEDED
    assert cloud.submits == [attempt_id] and cloud.finds == [attempt_id] and list(cloud.jobs) == [remote_id]
    [attempt] = engine.attempts(job_id)
    assert attempt.remote_id == remote_id and [a.remote_job_id for a in engine.artifacts(job_id)] == [remote_id]


def test_a_lost_submit_answer_is_sent_again_under_the_same_key(engine: Engine, cloud: FakeProvider,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # the runner waits 1 s, 2 s between submits whose outcome is unknown; here 10 ms
    monkeypatch.setattr(remote_runtime, "time", types.SimpleNamespace(
        monotonic=time.monotonic, sleep=lambda s: time.sleep(min(s, 0.01))))
    cloud.script(RemoteScript(lose_answer=True))
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    assert engine.executor.execute(attempt_id, engine.provider()) == JobState.SUCCEEDED
    [rjob] = cloud.jobs.values()  # one job: the second submit was refused as a reused key, then found
    assert cloud.submits == [attempt_id, attempt_id] and cloud.finds == [attempt_id]
    assert engine.attempts(job_id)[0].remote_id == rjob.id and len(engine.artifacts(job_id)) == 1


def test_key_already_used_but_not_found_hands_the_job_back(engine: Engine, cloud: FakeProvider) -> None:
    cloud.find_knows = False
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    cloud.preload(attempt_id)
    assert engine.executor.execute(attempt_id, engine.provider()) == JobState.QUEUED
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert job.local_only and not attempt.counts and "does not list" in attempt.error["message"]
    assert len(cloud.jobs) == 1 and cloud.statuses == []  # never followed, never run twice


def test_a_refused_submit_hands_the_job_back(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(reject=401))
    job_id = engine.job()
    srv = engine.provider()
    assert engine.executor.execute(engine.burst_attempt(job_id), srv) == JobState.QUEUED
    assert engine.get(job_id).local_only and cloud.jobs == {}
    assert not srv.healthy  # credentials refused: the provider is down for us


def test_the_job_timeout_asks_a_cancel_and_fails(engine: Engine, cloud: FakeProvider) -> None:
    cloud.script(RemoteScript(outcome="hang"))
    job_id = engine.job(timeout_s=0.1)
    assert engine.executor.execute(engine.burst_attempt(job_id), engine.provider()) == JobState.FAILED
    [rjob] = cloud.jobs.values()
    job, [attempt] = engine.get(job_id), engine.attempts(job_id)
    assert cloud.cancels == [rjob.id] and "timed out after 0s on cloud" in job.error["message"]
    assert attempt.state == JobState.FAILED and attempt.counts and not job.local_only
    assert any(r.startswith("timed out after 0s: cancel asked of cloud") for r in engine.reasons(job_id))


def test_a_cancel_before_the_submit_sends_nothing(engine: Engine, cloud: FakeProvider) -> None:
    job_id = engine.job()
    attempt_id = engine.burst_attempt(job_id)
    with engine.db.session() as s:
        job_app.cancel_job(s, job_id)
    assert engine.executor.execute(attempt_id, engine.provider()) == JobState.CANCELLED
    assert cloud.uploads == [] and cloud.submits == []


def read(engine: Engine, key: str) -> bytes:
    with engine.store.open(key) as f:
        return f.read()

