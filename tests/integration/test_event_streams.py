"""Server-Sent Events under load, over real HTTP (uvicorn in a thread, real ComfyUI servers): a waiting stream
holds no database connection, hundreds of them leave the rest of the API fast, and events committed by
another process (the CLI) reach a stream within a few watcher ticks, not at its safety read.

The latency bounds leave room for a loaded 2-core runner and still fail against streams that each hold (or
poll with) a database connection: 300 of those exhaust the pool (5 + 10), and a plain GET then waits for the
pool's 30 s timeout."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from benchmarks.overhead import free_port
from orchestrator.api.app import create_app
from orchestrator.api.routes import jobs as jobs_routes
from orchestrator.app import keys as key_app
from orchestrator.bootstrap import Context
from orchestrator.settings import Settings
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.pg import scratch_postgres

JOBS, STREAMS, DROPPED = 20, 300, 20  # DROPPED more streams are closed by the client after their first event


@contextmanager
def serve(settings: Settings, dispatch: bool) -> Iterator[tuple[str, dict[str, str], FastAPI]]:
    """The app under uvicorn in a thread, as ``medialab serve`` runs it; yields (base URL, key headers, app).
    ``dispatch=False``: no dispatcher yet (jobs stay QUEUED until the test starts one)."""
    app = create_app(settings, dispatch=dispatch)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    with app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "streams", ["run"])
    try:
        yield f"http://127.0.0.1:{port}", {"X-API-Key": key}, app
    finally:
        server.should_exit = True
        thread.join(60)


def submit_jobs(base: str, headers: dict[str, str], n: int) -> list[str]:
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        ids = []
        for i in range(n):
            art = http.post("/v1/artifacts", files={"file": (f"f{i}.png", png_bytes(24, 16, (i, 9, 200)))})
            assert art.status_code == 201, art.text
            job = http.post("/v1/jobs", json={"template": "upscale-esrgan",
                                              "params": {"image": art.json()["id"], "model": FIXTURE_MODEL}})
            assert job.status_code == 201, job.text
            ids.append(job.json()["id"])
        return ids


async def follow(client: httpx.AsyncClient, job_id: str, first: asyncio.Event | None = None,
                 last_event_id: int | None = None) -> list[dict[str, Any]]:
    """The data of every event of one stream, until the server ends it; ``first`` is set at the first event."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append({**json.loads(line[5:]), "received": datetime.now(UTC)})
                if first is not None:
                    first.set()
    return events


class Probe(threading.Thread):
    """Plain GETs (one job, the template library) one after another, with their latency, while streams wait;
    and the database connections checked out, sampled every 10 ms."""

    def __init__(self, base: str, headers: dict[str, str], job_id: str, ctx: Context) -> None:
        super().__init__(name="probe", daemon=True)
        self.base, self.headers, self.job_id, self.ctx = base, headers, job_id, ctx
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.checked_out: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=30) as http:
            paths = [f"/v1/jobs/{self.job_id}", "/v1/templates"]
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    r = http.get(paths[len(self.latencies) % 2])
                    if r.status_code != 200:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.latencies.append(time.perf_counter() - start)
                self.stop.wait(0.05)
        sampler.join()

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            self.checked_out.append(self.ctx.db.engine.pool.checkedout())

    def figures(self, start: int = 0, stop: int | None = None) -> tuple[float, float, float, int]:
        """p50, p95, max (seconds) and count of the GETs from ``start`` to ``stop``."""
        lat = sorted(self.latencies[start:stop])
        p95 = statistics.quantiles(lat, n=20)[18] if len(lat) > 1 else lat[0]
        return statistics.median(lat), p95, lat[-1], len(lat)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, settings: Settings) -> Iterator[str]:
    """The embedded SQLite, and a scratch PostgreSQL database (where connection exhaustion bites)."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    with scratch_postgres() as url:
        if url is None:
            pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432; .ci/run starts it")
        settings.database_url = url
        yield "postgresql"


def test_300_streams_hold_no_connection_and_leave_the_api_fast_while_20_jobs_run(
        settings: Settings, comfy_pair: list[str], database: str) -> None:
    settings.comfy_servers = comfy_pair
    with serve(settings, dispatch=False) as (base, headers, app):
        ctx: Context = app.state.ctx
        job_ids = submit_jobs(base, headers, JOBS)
        probe = Probe(base, headers, job_ids[0], ctx)
        figures: dict[str, Any] = {}

        async def scenario() -> list[list[dict[str, Any]]]:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=httpx.Timeout(120, connect=60),
                                         limits=limits) as client:
                firsts = [asyncio.Event() for _ in range(STREAMS + DROPPED)]
                kept = [asyncio.create_task(follow(client, job_ids[i % JOBS], firsts[i])) for i in range(STREAMS)]
                dropped = [asyncio.create_task(follow(client, job_ids[i % JOBS], firsts[STREAMS + i]))
                           for i in range(DROPPED)]
                start = time.perf_counter()
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 90)  # every stream is open
                figures["open_s"] = time.perf_counter() - start
                for task in dropped:  # the client goes away mid-stream
                    task.cancel()
                # every stream waits (all jobs QUEUED, no dispatcher): nothing may hold a connection for them
                probe.start()
                await asyncio.sleep(1.5)
                figures["waiting"] = (len(probe.latencies), list(probe.checked_out))
                watched = ctx.db.watcher.watched
                figures["ticks"] = ctx.db.watcher.ticks
                await asyncio.to_thread(ctx.start_dispatcher)  # now the jobs run, while the streams stay open
                start = time.perf_counter()
                done = await asyncio.wait_for(asyncio.gather(*kept), 180)
                figures["run_s"] = time.perf_counter() - start
                figures["watched"] = watched
                await asyncio.gather(*dropped, return_exceptions=True)
                return done

        try:
            streams = asyncio.run(scenario())
        finally:
            probe.stop.set()
            if probe.is_alive():
                probe.join(30)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            jobs = [http.get(f"/v1/jobs/{j}").json() for j in job_ids]
            recorded = {j: [e["id"] for e in http.get(f"/v1/jobs/{j}/events", params={"follow": "false"}).json()]
                        for j in job_ids}
        deadline = time.monotonic() + 10
        while ctx.db.watcher.watched and time.monotonic() < deadline:  # the dropped streams' ends reach the server
            time.sleep(0.05)
        left = ctx.db.watcher.watched

    n_wait, waiting_checked_out = figures["waiting"]
    w50, w95, _, _ = probe.figures(0, n_wait)
    p50, p95, worst, n = probe.figures()
    print(f"\n{database}: {STREAMS} streams (+{DROPPED} dropped) open in {figures['open_s']:.1f} s; {JOBS} jobs "
          f"done in {figures['run_s']:.1f} s; plain GET latency while the streams only waited: p50 {w50 * 1000:.0f} "
          f"ms, p95 {w95 * 1000:.0f} ms; over the whole run: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms ({n} GETs); connections checked out while the streams waited: max "
          f"{max(waiting_checked_out)} (median {statistics.median(waiting_checked_out)}), over the whole run: max "
          f"{max(probe.checked_out)}; watcher queries until "
          f"dispatch: {figures['ticks']}")
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * JOBS, [(j["state"], j["error"]) for j in jobs]
    for i, events in enumerate(streams):
        states = [e["state"] for e in events if e["kind"] == "state"]
        assert states[0] == "QUEUED" and "RUNNING" in states and events[-1]["state"] == "SUCCEEDED", (i, states)
        assert [e["id"] for e in events] == recorded[job_ids[i % JOBS]]  # every event, once, in order; then the end
    assert probe.errors == []
    assert waiting_checked_out and max(waiting_checked_out) <= 5, waiting_checked_out
    assert max(probe.checked_out) < 15, "the pool (5 + 10 overflow) was exhausted"
    assert p95 < 5.0, f"plain GET p95 {p95:.2f} s while {STREAMS} streams were open"
    assert len(figures["watched"]) == JOBS  # one watch per job, however many streams follow it...
    assert figures["ticks"] < 4 * (figures["open_s"] + 5)  # ...and one query per tick for all of them
    assert left == {}, f"streams that ended (or whose client went away) still watched: {left}"


def medialab(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process, on the same database and library as the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")}
    env.update(MEDIALAB_HOME=str(settings.home), MEDIALAB_TEMPLATES_DIR=str(settings.templates_dir))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_event_committed_by_another_process_reaches_the_stream_within_a_few_ticks(
        settings: Settings, comfy_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI cancels a queued job: this server's bell never hears of it, its event watcher does. The
    streams keep their behaviour: Last-Event-ID resumes after that event, ``follow=false`` lists them.
    The streams' safety read is moved out to 60 s, so only the watcher (a tick every 0.5 s) can deliver the
    event in time, however long the CLI takes to start."""
    monkeypatch.setattr(jobs_routes, "STREAM_SAFETY_S", 60.0)
    settings.comfy_servers = [comfy_url]
    with serve(settings, dispatch=False) as (base, headers, _app):
        (job_id,) = submit_jobs(base, headers, 1)
        so_far = httpx.get(f"{base}/v1/jobs/{job_id}/events", params={"follow": "false"}, headers=headers).json()
        assert [e["state"] for e in so_far] == ["QUEUED"]

        async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], datetime]:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                first = asyncio.Event()
                whole = asyncio.create_task(follow(client, job_id, first))
                resumed = asyncio.create_task(follow(client, job_id, last_event_id=so_far[-1]["id"]))
                await asyncio.wait_for(first.wait(), 30)
                await asyncio.sleep(0.5)  # both streams wait
                cancel = await asyncio.to_thread(medialab, settings, "jobs", "cancel", job_id)
                exited = datetime.now(UTC)
                assert cancel.returncode == 0 and "CANCELLED" in cancel.stdout, cancel.stdout + cancel.stderr
                return await asyncio.wait_for(whole, 30), await asyncio.wait_for(resumed, 30), exited

        whole, resumed, exited = asyncio.run(scenario())
        listed = httpx.get(f"{base}/v1/jobs/{job_id}/events", params={"follow": "false"}, headers=headers).json()
    assert [e["state"] for e in whole] == ["QUEUED", "CANCELLED"]
    assert [e["id"] for e in resumed] == [whole[-1]["id"]]  # only what came after Last-Event-ID
    assert [e["id"] for e in listed] == [e["id"] for e in whole]
    committed = datetime.fromisoformat(whole[-1]["at"])
    committed = committed if committed.tzinfo else committed.replace(tzinfo=UTC)
    delay = (whole[-1]["received"] - committed).total_seconds()
    print(f"\nan event committed by the CLI reached the stream {delay:.2f} s after it was written "
          f"({(whole[-1]['received'] - exited).total_seconds():+.2f} s from the CLI's exit)")
    assert delay < 3.0, f"{delay:.2f} s: events of other processes wait for the stream's safety read"
