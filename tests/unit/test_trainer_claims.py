"""Training claims: the GPU lease placement rule, claim/lease decisions, and the claim cycle on a database."""

from __future__ import annotations

import io
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.app import servers as server_app
from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from orchestrator.core.placement import ServerView, TrainerView, gpu_leases, place
from orchestrator.core.retry import RetryPolicy, outcome
from orchestrator.core.states import JobState
from orchestrator.db import jobs as job_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact, Attempt, Job
from orchestrator.settings import Settings
from orchestrator.training.app import datasets as dataset_store
from orchestrator.training.app import trainings as tj
from orchestrator.training.core import claims
from orchestrator.training.db.leases import leased_gpus
from storage import LocalDiskStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def noise_png(seed: int, w: int = 96, h: int = 80) -> bytes:
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (w, h), bytes(rnd.randrange(256) for _ in range(w * h * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- pure rules ------------------------------------------------------------------------------------
def test_gpu_lease_while_training_or_waiting_and_alive() -> None:
    trainers = [TrainerView("a", "http://gpu1", T0, None, training=True),
                TrainerView("b", "http://gpu2", T0, T0, training=False),  # waits for its GPU
                TrainerView("c", "http://gpu3", T0, None, training=False),  # idle
                TrainerView("d", None, T0, None, training=True),  # a GPU of its own
                TrainerView("e", "http://gpu4", T0 - timedelta(seconds=61), None, training=True)]  # silent
    assert gpu_leases(trainers, T0 + timedelta(seconds=1), lease_s=60) == {"http://gpu1", "http://gpu2"}


def test_placement_skips_a_leased_gpu() -> None:
    req = Requirements(frozenset({"LoadImage"}), frozenset())
    caps = Capabilities(node_classes=frozenset({"LoadImage"}))
    a = ServerView("a", "http://a", True, True, caps, gpu_leased=True)
    b = ServerView("b", "http://b", True, True, caps, inflight=1)
    assert place(req, [a, b]).id == "b"  # busy, but its GPU is free
    assert place(req, [a]) is None  # waits: the job is not refused, the lease ends


def test_may_start_only_on_an_empty_gpu() -> None:
    assert claims.may_start(None, {"http://gpu1": 2})
    assert claims.may_start("http://gpu1", {"http://gpu2": 1})
    assert not claims.may_start("http://gpu1", {"http://gpu1": 1})


@pytest.mark.parametrize(("number", "cancel", "state", "delay", "reason"), [
    (1, False, JobState.QUEUED, 1.0, "trainer t1 stopped reporting (lease expired); queued again"),
    (2, False, JobState.QUEUED, 2.0, "trainer t1 stopped reporting (lease expired); queued again"),
    (3, False, JobState.FAILED, None, "trainer t1 stopped reporting (lease expired); 3 attempt(s) used up"),
    (1, True, JobState.CANCELLED, None, "cancelled; trainer t1 stopped reporting")])
def test_lost_claim_outcome_and_reason(number: int, cancel: bool, state: JobState, delay: float | None,
                                       reason: str) -> None:
    out = outcome(RetryPolicy(3, 1.0), cancel_requested=cancel, spent=number)
    assert (out.state, out.delay_s) == (state, delay)
    assert claims.lost_claim_reason(out, "t1", number) == reason


def test_timeout() -> None:
    assert claims.timed_out(T0, 10, T0 + timedelta(seconds=11))
    assert not claims.timed_out(T0, 10, T0 + timedelta(seconds=9))
    assert not claims.timed_out(T0, None, T0 + timedelta(days=9))
    assert not claims.timed_out(None, 10, T0)


def test_progress_line() -> None:
    assert claims.progress_reason(3, 10, 0.1234, 12.4) == "step 3/10 loss 0.1234 eta 12s"
    assert claims.progress_reason(None, None, None, None) == "training"


# -- the cycle on a database -----------------------------------------------------------------------
@pytest.fixture
def env(tmp_path: Path):  # noqa: ANN201
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "base.safetensors").write_bytes(b"x")
    settings = Settings(home=tmp_path / "home", models_dir=models)
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalDiskStore(tmp_path / "objects")
    with db.session() as s:
        ids = [artifact_app.store_input(s, store, noise_png(i), f"f{i}.png").id for i in range(5)]
        ds = dataset_store.build(s, store, name="hero", trigger="mlchar", images=ids,
                                 caption_template="photo of {trigger}", resolution=64)
    yield db, store, settings, ds
    db.engine.dispose()


def submit(s, store, settings, ds, **kw):  # noqa: ANN001, ANN201
    return tj.submit_training(s, store, settings, dataset=ds.id, base="base.safetensors",
                              preset="sd15-character", trigger="mlchar",
                              overrides={"resolution": 64, "max_train_steps": 4, "save_every_n_steps": 2,
                                         "sample_every_n_steps": 2, **kw})


def test_base_checkpoints_stay_inside_the_models_folder(env) -> None:  # noqa: ANN001
    _db, _store, settings, _ds = env
    assert tj.local_checkpoint(settings, "base.safetensors") == settings.models_dir / "checkpoints" / "base.safetensors"
    for bad in ("/etc/passwd", "../checkpoints/base.safetensors", "", "x/../../base.safetensors"):
        assert tj.local_checkpoint(settings, bad) is None


def test_dataset_is_content_addressed_with_lineage(env) -> None:  # noqa: ANN001
    db, store, _settings, ds = env
    assert ds.role == "dataset" and ds.origin == f"dataset:{ds.sha256}"
    assert ds.params["name"] == "hero" and ds.params["version"] == 1 and ds.params["images"] == 5
    assert len(ds.input_artifacts) == 5
    assert set(ds.params["captions"].values()) == {"photo of mlchar"}
    with db.session() as s:
        again = dataset_store.build(s, store, name="hero", trigger="mlchar", images=list(ds.input_artifacts),
                                    caption_template="photo of {trigger}", resolution=64)
        assert again.id == ds.id
        with pytest.raises(InvalidInput, match="at least 5"):
            dataset_store.build(s, store, name="hero", trigger="mlchar", images=ds.input_artifacts[:2],
                                caption_template="photo of {trigger}", resolution=64)


def test_submit_validates_before_queueing(env) -> None:  # noqa: ANN001
    db, store, settings, ds = env
    with db.session() as s:
        with pytest.raises(InvalidInput, match="neither in"):
            tj.submit_training(s, store, settings, dataset=ds.id, base="nope.safetensors",
                               preset="sd15-character", trigger="mlchar", overrides={"resolution": 64})
        with pytest.raises(InvalidInput, match="unknown training option"):
            submit(s, store, settings, ds, warp_speed=9)
        with pytest.raises(InvalidInput, match="prepared at 64 px but the spec trains at 512"):
            tj.submit_training(s, store, settings, dataset=ds.id, base="base.safetensors",
                               preset="sd15-character", trigger="mlchar")
        with pytest.raises(InvalidInput, match="unknown dataset"):
            tj.submit_training(s, store, settings, dataset=ds.input_artifacts[0], base="base.safetensors",
                               preset="sd15-character", trigger="mlchar")
        assert not job_db.list_jobs(s)


def test_claim_heartbeat_cancel_and_lost_claims(env) -> None:  # noqa: ANN001
    db, store, settings, ds = env
    policy = RetryPolicy(2, 0.0)
    with db.session() as s:
        job = submit(s, store, settings, ds)
        assert (job.kind, job.state, job.params["name"]) == ("training", JobState.QUEUED, "hero")
        assert job_db.queued_candidates(s) == []  # never dispatched to ComfyUI
        got = tj.claim(s, "t1", 30, policy=policy)
        assert isinstance(got, tuple)
        claimed, attempt = got
        assert claimed.state == JobState.RUNNING and attempt.server == "trainer:t1"
        assert tj.claim(s, "t2", 30, policy=policy) is None  # nothing left
        reply = tj.heartbeat(s, attempt.id, "t1", 30, [{"kind": "progress", "step": 1, "total": 4, "loss": 0.5,
                                                         "eta_s": 3.0}])
        assert reply["cancel"] is False
        assert job_db.get_job(s, job.id).progress == 0.25
        with pytest.raises(Conflict, match="no longer held by trainer t2"):
            tj.heartbeat(s, attempt.id, "t2", 30)
        job_app.cancel_job(s, job.id)
        assert tj.heartbeat(s, attempt.id, "t1", 30)["cancel"] is True
        done = tj.finish(s, store, settings, attempt.id, "t1", JobState.CANCELLED)
        assert done.state == JobState.CANCELLED

        job2 = submit(s, store, settings, ds)
        _j, a1 = tj.claim(s, "t1", 30, policy=policy)
        s.execute(update(Attempt).where(col(Attempt.id) == a1.id).values(lease_until=T0))  # trainer died
        s.commit()
        assert tj.expire_claims(s, policy) == 1
        s.expire_all()
        assert job_db.get_job(s, job2.id).state == JobState.QUEUED  # queued again
        _j, a2 = tj.claim(s, "t2", 30, policy=policy)
        assert a2.number == 2
        with pytest.raises(Conflict):
            tj.heartbeat(s, a1.id, "t1", 30)  # the old claim is gone
        s.execute(update(Attempt).where(col(Attempt.id) == a2.id).values(lease_until=T0))
        s.commit()
        tj.expire_claims(s, policy)
        s.expire_all()
        final = job_db.get_job(s, job2.id)
        assert final.state == JobState.FAILED and "attempt(s) used up" in final.error["message"]
        reasons = [e.reason for e in job_db.events_after(s, job2.id) if e.kind == "state"]
        assert reasons[0] == "submitted" and "queued again" in reasons[2]


def test_a_trainer_sharing_a_gpu_waits_and_holds_it(env) -> None:  # noqa: ANN001
    db, store, settings, ds = env
    with db.session() as s:
        gpu = server_app.register_server(s, "http://gpu1:8188", "gpu1")
        submit(s, store, settings, ds)
        busy = s.exec(select(Job)).first()
        s.add(Attempt(job_id=busy.id, number=9, server=gpu.url, owner="x"))  # inference in flight there
        s.commit()
        assert leased_gpus(s, 30) == set()
        got = tj.claim(s, "t1", 30, gpu_server="gpu1")
        assert isinstance(got, str) and "waiting for http://gpu1:8188" in got
        assert leased_gpus(s, 30) == {gpu.url}  # no new inference goes there
        s.execute(update(Attempt).where(col(Attempt.server) == gpu.url).values(state=JobState.SUCCEEDED))
        s.commit()
        got = tj.claim(s, "t1", 30, gpu_server="gpu1")
        assert isinstance(got, tuple)
        assert leased_gpus(s, 30) == {gpu.url}  # held while it trains
        tj.finish(s, store, settings, got[1].id, "t1", JobState.FAILED, {"message": "boom"})
        assert tj.claim(s, "t1", 30, gpu_server="gpu1") is None
        assert leased_gpus(s, 30) == set()


def test_a_training_past_its_timeout_is_stopped_and_failed(env) -> None:  # noqa: ANN001
    db, store, settings, ds = env
    with db.session() as s:
        job = tj.submit_training(s, store, settings, dataset=ds.id, base="base.safetensors", preset="sd15-character",
                                 trigger="mlchar", overrides={"resolution": 64}, timeout_s=0.001)
        _job, attempt = tj.claim(s, "t1", 30)
        time.sleep(0.01)
        assert tj.heartbeat(s, attempt.id, "t1", 30) | {"lease_until": None} == {
            "cancel": True, "timed_out": True, "lease_until": None}
        done = tj.finish(s, store, settings, attempt.id, "t1", JobState.CANCELLED)
        assert done.state == JobState.FAILED and done.error == {"message": "timed out after 0.001 s"}
        assert job_db.get_job(s, job.id).state == JobState.FAILED


def test_sd_scripts_env_defaults_to_the_install_layout(tmp_path: Path) -> None:
    import sys

    from orchestrator.training.runtime.trainer import sd_scripts_env

    assert sd_scripts_env(tmp_path) == (sys.executable, None)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / "tokenizers").mkdir()
    assert sd_scripts_env(tmp_path) == (str(tmp_path / ".venv" / "bin" / "python"), tmp_path / "tokenizers")
    assert sd_scripts_env(tmp_path, "/opt/py", Path("/tok")) == ("/opt/py", Path("/tok"))


def test_a_final_report_waits_out_a_moment_of_unavailability(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.core.errors import Unavailable
    from orchestrator.training.runtime import trainer

    monkeypatch.setattr(trainer.time, "sleep", lambda s: None)
    calls = iter([Unavailable("down"), Unavailable("down"), "art-1"])

    def call() -> str:
        got = next(calls)
        if isinstance(got, Exception):
            raise got
        return got

    assert trainer._retrying(call, type("C", (), {"job_id": "j"})()) == "art-1"


class Upload(io.BytesIO):
    """A trainer's output as it arrives, read in small pieces; ``on_read`` runs at every read."""

    def __init__(self, data: bytes, on_read) -> None:  # noqa: ANN001
        super().__init__(data)
        self.on_read = on_read

    def read(self, n: int | None = -1) -> bytes:
        self.on_read()
        return super().read(256)


def test_an_output_upload_holds_no_connection_and_a_claim_lost_meanwhile_gets_nothing(env) -> None:  # noqa: ANN001
    """The claim is checked before the bytes are read and again when the rows are written; in between no pooled
    connection is held (a checkpoint is gigabytes)."""
    db, store, settings, ds = env
    with db.session() as s:
        submit(s, store, settings, ds)
        _job, attempt = tj.claim(s, "t1", 30)
        held: list[int] = []
        art = tj.store_output(s, store, attempt.id, "t1", "sample", Upload(noise_png(3), lambda: held.append(
            db.engine.pool.checkedout())), "s.png", step=2)
        assert art.output_name == "sample" and len(held) > 2 and set(held) == {0}

        def take_back() -> None:  # the claim expires and is taken back while the bytes arrive
            with db.session() as other:
                other.execute(update(Attempt).where(col(Attempt.id) == attempt.id).values(state=JobState.FAILED))
                other.commit()

        with pytest.raises(Conflict, match="no longer held by trainer t1; its checkpoint is not taken"):
            tj.store_output(s, store, attempt.id, "t1", "checkpoint", Upload(b"weights" * 100, take_back), "c.ckpt")
        s.expire_all()
        assert [a.output_name for a in s.exec(select(Artifact).where(Artifact.job_id == attempt.job_id))] == ["sample"]


def test_a_claim_is_bound_to_the_key_that_made_it(env) -> None:  # noqa: ANN001
    """Another trainer key cannot renew, upload to or end a claim, even naming the trainer that holds it."""
    db, store, settings, ds = env
    with db.session() as s:
        submit(s, store, settings, ds)
        _job, attempt = tj.claim(s, "t1", 30, api_key_id="key-a")
        assert tj.heartbeat(s, attempt.id, "t1", 30, api_key_id="key-a")["cancel"] is False
        for other in ("key-b", None):
            with pytest.raises(Forbidden, match="made with another API key"):
                tj.heartbeat(s, attempt.id, "t1", 30, api_key_id=other)
            with pytest.raises(Forbidden):
                tj.store_output(s, store, attempt.id, "t1", "sample", io.BytesIO(noise_png(9)), "s.png",
                                api_key_id=other)
            with pytest.raises(Forbidden):
                tj.finish(s, store, settings, attempt.id, "t1", JobState.FAILED, {"message": "x"}, api_key_id=other)
        with pytest.raises(NotFound):  # an inference attempt is no training claim
            tj.held_attempt(s, "no-such-attempt", "t1", "key-a")
        assert job_db.get_job(s, attempt.job_id).state == JobState.RUNNING
