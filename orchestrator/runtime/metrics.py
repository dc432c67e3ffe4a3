"""Prometheus metrics: queue depth, jobs by state, per-server health and load, dispatch latency,
model loads. Each process has its own registry (served at /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlmodel import func, select

from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db.tables import Job

if TYPE_CHECKING:
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool


class _StateCollector:
    """Read at scrape time from the database (shared by replicas) and the pool."""

    def __init__(self, db: Database, pool: Pool | None) -> None:
        self.db = db
        self.pool = pool

    def collect(self) -> Iterator[Metric]:

        with self.db.session() as s:
            counts = dict(s.exec(select(Job.state, func.count()).group_by(Job.state)).all())
            inflight = attempt_db.inflight_by_server(s)
        jobs = GaugeMetricFamily("medialab_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("medialab_queue_depth", "Jobs waiting to be dispatched.",
                                value=counts.get(JobState.QUEUED, 0))
        healthy = GaugeMetricFamily("medialab_server_healthy", "1 when the server answers.", labels=["server"])
        busy = GaugeMetricFamily("medialab_server_busy", "1 while the server has a prompt.", labels=["server"])
        load = GaugeMetricFamily("medialab_server_inflight", "Prompts on the server.", labels=["server"])
        for srv in self.pool.servers if self.pool else []:
            healthy.add_metric([srv.name], float(srv.healthy))
            busy.add_metric([srv.name], float(inflight.get(srv.url, 0) > 0))
            load.add_metric([srv.name], inflight.get(srv.url, 0))
        yield from (healthy, busy, load)


class Metrics:
    def __init__(self, db: Database, pool: Pool | None) -> None:
        self.registry = CollectorRegistry()
        self.dispatch_latency = Histogram(
            "medialab_dispatch_latency_seconds", "From QUEUED to dispatched to a server.", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.model_loads = Counter("medialab_model_loads", "Jobs sent to a server without their models loaded.",
                                   ["server"], registry=self.registry)
        self.registry.register(_StateCollector(db, pool))
        if pool is not None:
            pool.on_model_load = lambda srv, models: self.model_loads.labels(srv.name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
