"""Prometheus metrics: queue depth, jobs by state, per-server health and load, dispatch latency,
model loads, burst spend and budgets. Each process has its own registry (served at /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlmodel import func, select

from orchestrator.core.burst import windows
from orchestrator.core.server_urls import redact
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import servers as server_db
from orchestrator.db.tables import Job
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool


class _StateCollector:
    """Read at scrape time from the database (shared by replicas) and the pool."""

    def __init__(self, db: Database, pool: Pool | None, settings: Settings) -> None:
        self.db = db
        self.pool = pool
        self.settings = settings

    def collect(self) -> Iterator[Metric]:

        day, month = windows(datetime.now(UTC))
        with self.db.session() as s:
            counts = dict(s.exec(select(Job.state, func.count()).group_by(Job.state)).all())
            inflight = attempt_db.inflight_by_server(s)
            spend = attempt_db.burst_spend(s, day, month)
            totals = attempt_db.burst_by_server(s)
            rows = server_db.server_rows(s)
        names = {r.url: r.name for r in rows}
        totals |= {r.url: (0.0, 0) for r in rows if r.tier > 0 and r.url not in totals}
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
        yield from self._burst(spend.day, spend.month, totals, names)

    def _burst(self, day: float, month: float, totals: dict[str, tuple[float, int]],
               names: dict[str, str]) -> Iterator[Metric]:
        """Burst spend in the current UTC day and month (running attempts at their estimate), the caps that are
        set, and per burst server (tier 1 and up; a removed one by its URL) its attempts' cost and number, all
        time."""
        spent = GaugeMetricFamily("medialab_burst_spend", "Burst spend in the current UTC window (running burst "
                                  "attempts at their estimate).", labels=["window"])
        spent.add_metric(["day"], day)
        spent.add_metric(["month"], month)
        yield spent
        budget = GaugeMetricFamily("medialab_burst_budget", "The burst budget of the window (only caps that are "
                                   "set).", labels=["window"])
        for window, cap in (("day", self.settings.burst_budget_day), ("month", self.settings.burst_budget_month)):
            if cap is not None:
                budget.add_metric([window], cap)
        yield budget
        cost = CounterMetricFamily("medialab_burst_cost", "What the burst attempts of a server cost (running "
                                   "ones: their estimate).", labels=["server"])
        jobs = CounterMetricFamily("medialab_burst_jobs", "Burst attempts per server.", labels=["server"])
        for url, (total, n) in sorted(totals.items()):
            label = names.get(url) or redact(url)
            cost.add_metric([label], total)
            jobs.add_metric([label], n)
        yield from (cost, jobs)


class Metrics:
    def __init__(self, db: Database, pool: Pool | None, settings: Settings | None = None) -> None:
        self.registry = CollectorRegistry()
        self.dispatch_latency = Histogram(
            "medialab_dispatch_latency_seconds", "From QUEUED to dispatched to a server.", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.model_loads = Counter("medialab_model_loads", "Jobs sent to a server without their models loaded.",
                                   ["server"], registry=self.registry)
        self.registry.register(_StateCollector(db, pool, settings or get_settings()))
        if pool is not None:
            pool.on_model_load = lambda srv, models: self.model_loads.labels(srv.name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
