"""Issue 11: one bad job never stalls the queue, a restart under the same name strands nothing, a hung server
never does the work twice, a store outage makes work wait, one ComfyUI under two URLs and bad registry rows
(real ComfyUI servers on the CPU, a real S3 server, real orchestrator processes)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from orchestrator.app import servers as server_app
from orchestrator.comfy.worker import LocalWorker, free_port
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import servers as server_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Attempt, Job, ServerRow
from orchestrator.runtime import dispatcher as dispatcher_module
from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, models_in, png_bytes, start_workers
from tests.integration.conftest import Api, make_api
from tests.integration.test_cli import medialab
from tests.integration.test_cli_remote import medialab as remote_cli
from tests.integration.test_cli_remote import served
from tests.integration.test_jobs_api import submit, upload, wait
from tests.integration.test_pool import _events, admin_key, orchestrator_env, running_on, serve, wait_until
from tests.pg import PG_ADMIN
from tests.s3 import S3Server
from tests.tcp_proxy import TcpProxy


def db_attempts(api: Api, job_id: str) -> list[Attempt]:
    with api.client.app.state.ctx.db.session() as s:
        return attempt_db.job_attempts(s, job_id)


def db_job_final(api: Api, job_id: str, timeout: float = 30) -> Job:
    """The job once it ended, read from the database (the API cannot show a job whose params are no object)."""
    def ended() -> Job | None:
        with api.client.app.state.ctx.db.session() as s:
            job = job_db.get_job(s, job_id)
            return job if job.state.terminal else None
    return wait_until(ended, timeout=timeout, what=f"job {job_id} ended")


def insert_job(api: Api, **fields: Any) -> str:
    """A job written straight into the database, as an old client or a bug would: no submit-time check."""
    with api.client.app.state.ctx.db.session() as s:
        job = Job(**fields)
        s.add(job)
        s.commit()
        return job.id


def dispatch_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == dispatcher_module.__name__ and r.levelno >= logging.ERROR]


# -- one bad job never stops the queue ------------------------------------------------------------------
def test_impossible_and_broken_jobs_end_failed_while_good_ones_run(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ctx = api.client.app.state.ctx
    frame = upload(api, png_bytes(48, 32))
    with ctx.db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
    bad = {  # older and more urgent than the good ones: each dispatch round meets them first
        "impossible": insert_job(api, template_version_id=row.id, template=t.name, version=t.version, priority=50,
                                 params=tpl.validate_params(t, {"image": frame["id"], "model": "absent.safetensors"})),
        "template gone": insert_job(api, template_version_id=None, template="ghost", version=3, priority=50,
                                    params={"image": frame["id"]}),
        "params broken": insert_job(api, template_version_id=row.id, template=t.name, version=t.version, priority=50,
                                    params=["not", "an", "object"]),
    }
    good = [submit(api, {"image": upload(api, png_bytes(40, 30, (i, 50, 9)))["id"], "model": FIXTURE_MODEL}).json()
            for i in range(3)]
    for job in good:
        assert wait(api, job["id"], timeout=120)["state"] == "SUCCEEDED"
    finals = {what: db_job_final(api, job_id) for what, job_id in bad.items()}
    assert {what: j.state.value for what, j in finals.items()} == dict.fromkeys(bad, "FAILED")
    assert finals["impossible"].error["message"] == (
        f"no server can run this job: {ctx.pool.servers[0].url} lacks upscale_models/absent.safetensors "
        f"(it has: {models_in('upscale_models')})")
    assert finals["template gone"].error["message"] == (
        "cannot be dispatched: its template version (ghost@v3, id None) no longer exists")
    assert finals["params broken"].error["message"].startswith("cannot be dispatched: AttributeError")
    assert all(not db_attempts(api, job_id) for job_id in bad.values())  # none reached a server
    assert dispatch_failures(caplog) == []  # no round failed


def test_medialab_submit_refuses_what_the_api_refuses(comfy_url: str, tmp_path: Path) -> None:
    """`medialab submit` is a client of the API: the service's pool refuses the job, nothing is queued."""
    home = tmp_path / ".medialab"
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(32, 24))
    key = re.search(r"(mlk_\S+)", medialab(home, "init").stdout).group(1)
    added = medialab(home, "servers", "add", comfy_url, "--name", "gpu1")
    assert added.returncode == 0, added.stdout + added.stderr
    with served(home, "--no-dispatch") as url:
        r = remote_cli(home, "submit", "upscale-esrgan", "--input", str(frame), "--set", "model=missing.pth",
                       "--no-watch", env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key})
    assert r.returncode == 1
    assert f"{comfy_url} lacks upscale_models/missing.pth (it has: {models_in('upscale_models')})" in r.stderr, r.stderr
    db = Database(f"sqlite:///{(home / 'medialab.db').resolve()}")
    with db.session() as s:
        assert job_db.list_jobs(s) == []
    db.engine.dispose()


def test_a_job_whose_only_capable_server_is_removed_fails_with_the_reason(comfy_url: str, settings: Settings) -> None:
    """While the capable server drains the job waits (it may come back); once it is removed, the job fails,
    naming what the remaining server lacks."""
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        ctx = api.client.app.state.ctx
        other = f"http://127.0.0.1:{free_port()}"  # down, with capabilities recorded when it was up
        caps = Capabilities(node_classes=frozenset(ctx.pool.servers[0].caps.node_classes),
                            models={"upscale_models": frozenset({"other.pth"})})
        with ctx.db.session() as s:
            s.add(ServerRow(name="other", url=other, capabilities=caps.to_json()))
            s.commit()
        capable = ctx.pool.servers[0].name
        assert api.client.post(f"/v1/servers/{capable}/drain", headers=api.admin).status_code == 200
        ctx.pool.sync()
        frame = upload(api, png_bytes(40, 30))
        with ctx.db.session() as s:
            row, t = template_db.get_template(s, "upscale-esrgan")
        job_id = insert_job(api, template_version_id=row.id, template=t.name, version=t.version,
                            params=tpl.validate_params(t, {"image": frame["id"], "model": FIXTURE_MODEL}))
        time.sleep(3)  # several dispatch rounds
        assert api.client.get(f"/v1/jobs/{job_id}", headers=api.reader).json()["state"] == "QUEUED"
        assert api.client.delete(f"/v1/servers/{capable}", headers=api.admin).status_code == 200
        final = wait(api, job_id, timeout=30)
        assert final["state"] == "FAILED"
        assert final["error"]["message"] == (f"no server can run this job: {other} lacks upscale_models/"
                                             f"{FIXTURE_MODEL} (it has: other.pth)")


# -- one ComfyUI under two URLs; registry rows the pool cannot use -----------------------------------------
def test_one_comfyui_under_two_urls_and_bad_registry_rows(comfy_url: str, settings: Settings,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = comfy_url.rsplit(":", 1)[1]
    twin = f"http://localhost:{port}"
    settings.comfy_servers = [comfy_url]
    settings.health_interval_s = 1.0
    bad_urls = {"nul": "http://bad\x00host:8188", "huge": "http://" + "a" * 100_000 + ":8188"}
    with make_api(settings, dispatch=True) as api:
        ctx = api.client.app.state.ctx
        with ctx.db.session() as s:  # inserted directly: registration may refuse them
            s.add(ServerRow(name="twin", url=twin))
            s.add_all(ServerRow(name=name, url=url) for name, url in bad_urls.items())
            s.commit()
        wait_until(lambda: (srv := ctx.pool.get(twin)) is not None and srv.healthy and srv.caps, timeout=30,
                   what="the twin URL in the pool")
        assert len({srv.monitor.client_id for srv in ctx.pool.servers}) == 2
        started = time.monotonic()
        jobs = [submit(api, {"image": upload(api, png_bytes(64, 48, (i, 80, 20)))["id"], "model": FIXTURE_MODEL}
                       ).json() for i in range(4)]
        finals = [wait(api, j["id"], timeout=120) for j in jobs]
        elapsed = time.monotonic() - started
        assert [f["state"] for f in finals] == ["SUCCEEDED"] * 4
        assert {f["attempts"][0]["server"] for f in finals} == {comfy_url, twin}  # both names were used
        for f in finals:  # every job's events came over its monitor's own websocket
            events = _events(api, f["id"])
            assert any(e["kind"] == "progress" for e in events), (f["attempts"][0]["server"], events)
        assert elapsed < 4 * settings.event_timeout_s + 30, elapsed
        with ctx.db.session() as s:
            rows = {r.name: r for r in server_db.server_rows(s)}
        for name in bad_urls:
            assert not rows[name].healthy and rows[name].last_error.startswith("unusable registry entry: ")
        reports = [r for r in caplog.records if "skipped until it is removed" in r.getMessage()]
        assert len(reports) == 2  # once per row, not every sync
        assert not [r for r in caplog.records if r.getMessage() == "pool loop"]


# -- a restart under the same name ----------------------------------------------------------------------
def test_restart_under_the_same_replica_id_within_the_lease_adopts_the_attempt(comfy_url: str,
                                                                               tmp_path: Path) -> None:
    """Same MEDIALAB_REPLICA_ID, restarted before the dead process's lease ran out: the new process must not
    renew that lease (it is not its own), so the attempt is adopted once it lapses and finishes once. The lease
    is long enough for a restart on a loaded runner (40-60 s of it are left at the kill: it is renewed every
    lease/3) and for the new process to run its lease loop (every lease/3) before it lapses."""
    lease_s = 60.0
    env = orchestrator_env(tmp_path / "home", [comfy_url], MEDIALAB_REPLICA_ID="x")
    env["MEDIALAB_LEASE_S"] = str(lease_s)
    headers = {"X-API-Key": admin_key(env)}
    port = free_port()
    proc = serve(env, port, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}/v1"
    art = httpx.post(f"{base}/artifacts", headers=headers, files={"file": ("f.png", png_bytes(384, 384))}).json()
    job = httpx.post(f"{base}/jobs", headers=headers,
                     json={"template": "upscale-esrgan", "params": {"image": art["id"], "model": FIXTURE_MODEL}}).json()
    attempt = wait_until(lambda: httpx.get(f"{base}/jobs/{job['id']}", headers=headers).json()["attempts"],
                         what="dispatched")[0]
    wait_until(lambda: running_on(comfy_url, attempt["id"]), what="prompt running")
    db = Database(f"sqlite:///{(tmp_path / 'home' / 'medialab.db').resolve()}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with db.session() as s:
        dead = s.get(Attempt, attempt["id"])
    proc = serve(env, port, tmp_path / "serve.log")
    try:
        assert time.time() < dead.lease_until.timestamp(), "the restart took longer than the lease: nothing tested"
        final = wait_until(lambda: (j := httpx.get(f"{base}/jobs/{job['id']}", headers=headers).json())["state"]
                           in ("SUCCEEDED", "FAILED", "CANCELLED") and j, timeout=lease_s * 3 + 60, what="job finished")
        events = httpx.get(f"{base}/jobs/{job['id']}/events", headers=headers, timeout=10).text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    with db.session() as s:
        adopted = s.get(Attempt, attempt["id"])
    db.engine.dispose()
    assert final["state"] == "SUCCEEDED", final
    assert [a["id"] for a in final["attempts"]] == [attempt["id"]] and len(final["outputs"]) == 1
    assert "adopted after its orchestrator stopped" in events
    assert dead.owner.startswith("x-") and adopted.owner.startswith("x-") and adopted.owner != dead.owner


# -- a hung server ----------------------------------------------------------------------------------------
@pytest.fixture
def frozen_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    """A server of this test's own: it is frozen with SIGSTOP (a shared one would stall other tests)."""
    (worker,) = start_workers(tmp_path_factory, 1)
    yield worker
    if worker.proc and worker.proc.poll() is None:
        os.kill(worker.proc.pid, signal.SIGCONT)  # never leave it frozen, whatever the test did
    worker.stop()


def test_hung_server_woken_up_does_not_run_the_abandoned_prompts(frozen_worker: LocalWorker, comfy_url: str,
                                                                 settings: Settings) -> None:
    """Both prompts go to the server that will hang (the spare is registered drained), which is frozen as soon
    as the first one runs, so nearly all of its work is still ahead (1024x1024 through the x4 model: tens of
    seconds on a CPU, against the second or two between waking up and the clean-up); only then is the spare
    activated. The jobs finish there, once each; the woken server drops the abandoned prompts."""
    hung = frozen_worker.url
    settings.comfy_servers = [hung]
    settings.event_timeout_s = 2.0
    settings.health_interval_s = 1.0
    settings.retry_base_delay_s = 0.2
    with make_api(settings, dispatch=True) as api:
        ctx = api.client.app.state.ctx
        with ctx.db.session() as s:  # in the pool before anything runs, but no job goes to it yet
            server_app.register_server(s, comfy_url, "spare")
            server_app.set_server_state(s, "spare", "draining")
        ctx.pool.sync()
        wait_until(lambda: (srv := ctx.pool.get(comfy_url)) is not None and srv.healthy and not srv.active,
                   timeout=60, what="spare server in the pool, drained")
        long_run = {"model": FIXTURE_MODEL, "resize": 0.125, "resize_method": "nearest-exact"}  # small output
        running = submit(api, {"image": upload(api, png_bytes(1024, 1024, (9, 99, 9)))["id"], **long_run}).json()
        pending = submit(api, {"image": upload(api, png_bytes(96, 64, (99, 9, 9)))["id"],
                               "model": FIXTURE_MODEL}).json()
        a_run = wait_until(lambda: db_attempts(api, running["id"]), what="first dispatched")[0]
        a_pend = wait_until(lambda: db_attempts(api, pending["id"]), what="second dispatched")[0]
        assert a_run.server == a_pend.server == hung
        wait_until(lambda: running_on(hung, a_run.id), what="first prompt running")
        wait_until(lambda: any(i[1] == a_pend.id for i in httpx.get(f"{hung}/queue").json()["queue_pending"]),
                   what="second prompt pending behind it")
        os.kill(frozen_worker.proc.pid, signal.SIGSTOP)  # hung, not dead: its sockets stay open
        try:
            with ctx.db.session() as s:
                server_app.set_server_state(s, "spare", "active")
            ctx.pool.sync()
            finals = [wait(api, j["id"], timeout=300) for j in (running, pending)]
        finally:
            os.kill(frozen_worker.proc.pid, signal.SIGCONT)
        for final in finals:  # each job has exactly one set of outputs: the spare's
            assert final["state"] == "SUCCEEDED", final
            first, second = final["attempts"]
            assert (first["server"], first["state"], second["server"]) == (hung, "FAILED", comfy_url)
            assert len(final["outputs"]) == 1 and final["outputs"][0]["attempt_id"] == second["id"]
        assert all(db_attempts(api, j["id"])[0].error["transient"] for j in (running, pending))

        # once the woken server answers, the abandoned prompts are removed or interrupted: the flags clear
        # only when its queue no longer holds them, and from then on it runs neither
        wait_until(lambda: not any(db_attempts(api, j["id"])[0].abandoned for j in (running, pending)),
                   timeout=120, what="abandoned flags cleared")
        queue = httpx.get(f"{hung}/queue", timeout=10).json()
        held = {item[1] for key in ("queue_running", "queue_pending") for item in queue[key]}
        assert not held & {a_run.id, a_pend.id}, queue
        history = httpx.get(f"{hung}/history", timeout=10).json()
        assert a_pend.id not in history  # removed from the queue before it ran
        entry = history.get(a_run.id)  # interrupted by its prompt_id, not run to completion
        assert entry is None or entry["status"]["status_str"] == "error" and any(
            m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry


# -- a store outage before dispatch ------------------------------------------------------------------------
@pytest.fixture
def s3_behind_proxy() -> Iterator[tuple[S3Server, TcpProxy]]:
    server = S3Server().start()
    proxy = TcpProxy(server.port).start()
    yield server, proxy
    proxy.cut()
    server.stop()


def test_store_down_at_dispatch_makes_the_job_wait_without_spending_attempts(
        s3_behind_proxy: tuple[S3Server, TcpProxy], settings: Settings, comfy_url: str) -> None:
    s3, proxy = s3_behind_proxy
    for name, value in {**s3.settings(), "s3_endpoint": proxy.endpoint}.items():
        setattr(settings, name, value)
    settings.comfy_servers = [comfy_url]
    settings.max_attempts = 2  # spending an attempt per failed read would fail the job at the second
    settings.retry_base_delay_s = 0.5
    settings.stage_ahead_servers = 0  # the input is not sent ahead at upload: the attempt must read it from the store
    with make_api(settings, dispatch=True) as api:
        frame = upload(api, png_bytes(64, 48, (5, 90, 5)))
        proxy.cut()  # the object store is unreachable from now on
        job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()

        def waits() -> list[str]:
            return [e["reason"] for e in _events(api, job["id"]) if e["reason"].startswith("waiting: ")]

        wait_until(lambda: len(waits()) >= 3, timeout=120, what="three waits for the store")
        assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.reader).json()["state"] in ("QUEUED", "RUNNING")
        proxy.start()  # back, with its data
        final = wait(api, job["id"], timeout=120)
        assert final["state"] == "SUCCEEDED", final["error"]
        reasons = waits()
        assert all(f"object store {proxy.endpoint} unreachable" in r for r in reasons), reasons
        delays = [float(r.rsplit("looking again in ", 1)[1].removesuffix("s")) for r in reasons]
        assert delays[:4] == [0.5, 1.0, 2.0, 4.0][:len(delays)], delays  # growing backoff
        attempts = db_attempts(api, job["id"])
        assert [a.counts for a in attempts] == [False] * (len(attempts) - 1) + [True]
        assert attempts[-1].state.value == "SUCCEEDED" and len(final["outputs"]) == 1
        with api.client.app.state.ctx.db.session() as s:
            assert attempt_db.counted_attempts(s, job["id"]) == 1
        assert all(a.error["dependency"] for a in attempts[:-1])


# -- a database blip -------------------------------------------------------------------------------------
def test_database_outage_while_a_job_finishes_leaves_it_to_recovery(comfy_url: str, pg_url: str,  # noqa: F811
                                                                    settings: Settings) -> None:
    """PostgreSQL refuses every connection while the prompt finishes: the executor cannot record the end, lets
    the attempt go (its lease lapses), and once the database is back the attempt is adopted and its outputs
    ingested from the server: SUCCEEDED once, nothing run twice. The connections are cut as soon as the prompt
    is on the server (queued or running), and the prompt is a long one (768x768 through the x4 model), so it
    cannot end before the outage begins."""
    name = pg_url.rsplit("/", 1)[1]
    settings.database_url = pg_url
    settings.comfy_servers = [comfy_url]
    settings.lease_s = 3.0
    with make_api(settings, dispatch=True) as api:
        job = submit(api, {"image": upload(api, png_bytes(768, 768, (70, 7, 7)))["id"], "model": FIXTURE_MODEL,
                           "resize": 0.125, "resize_method": "nearest-exact"}).json()
        attempt = wait_until(lambda: db_attempts(api, job["id"]), what="dispatched")[0]

        def on_server() -> bool:
            queue = httpx.get(f"{comfy_url}/queue").json()
            return any(item[1] == attempt.id for key in ("queue_running", "queue_pending") for item in queue[key])

        wait_until(on_server, what="prompt on the server")
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                assert not httpx.get(f"{comfy_url}/history/{attempt.id}").json(), "the prompt ended before the outage"
                wait_until(lambda: httpx.get(f"{comfy_url}/history/{attempt.id}").json(), timeout=300,
                           what="prompt finished during the outage")
                time.sleep(3)  # the executor meets the outage when it records the end
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        final = wait(api, job["id"], timeout=120)
        assert final["state"] == "SUCCEEDED", final
        assert [a["id"] for a in final["attempts"]] == [attempt.id] and len(final["outputs"]) == 1
        assert any("adopted" in e["reason"] for e in _events(api, job["id"]))
        assert list(httpx.get(f"{comfy_url}/history", params={"max_items": 10000}).json()).count(attempt.id) == 1
