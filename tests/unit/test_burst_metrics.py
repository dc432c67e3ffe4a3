"""The burst gauges of /metrics, read from the database at scrape: spend by window, the caps that are set, and
per burst server its attempts' cost and number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.core.states import JobState
from orchestrator.db.engine import Database
from orchestrator.db.tables import Attempt, Job, ServerRow
from orchestrator.runtime.metrics import Metrics
from orchestrator.settings import Settings


def test_burst_gauges(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    old = datetime.now(UTC) - timedelta(days=70)  # outside this month: only in the all-time totals
    with db.session() as s:
        s.add(ServerRow(name="cloud", url="http://cloud:1", kind="runpod", tier=1, cost_per_gpu_s=0.01))
        s.add(ServerRow(name="idle", url="http://idle:1", kind="runpod", tier=2))
        s.add(ServerRow(name="gpu0", url="http://gpu0:1"))
        job = Job(template="t", version=1, params={}, state=JobState.RUNNING)
        s.add(job)
        s.flush()
        for n, (server, tier, cost, started) in enumerate([("http://cloud:1", 1, 0.5, datetime.now(UTC)),
                                                           ("http://cloud:1", 1, 2.0, old),
                                                           ("http://gpu0:1", 0, 0.0, datetime.now(UTC))], 1):
            s.add(Attempt(job_id=job.id, number=n, server=server, tier=tier, cost=cost, started_at=started,
                          state=JobState.FAILED))
        s.commit()
    text = Metrics(db, None, Settings(home=tmp_path, burst_budget_day=3.0)).render().decode()
    assert 'medialab_burst_spend{window="day"} 0.5' in text
    assert 'medialab_burst_spend{window="month"} 0.5' in text
    assert 'medialab_burst_budget{window="day"} 3.0' in text
    assert 'medialab_burst_budget{window="month"}' not in text  # no cap set
    assert 'medialab_burst_cost_total{server="cloud"} 2.5' in text
    assert 'medialab_burst_jobs_total{server="cloud"} 2.0' in text
    assert 'medialab_burst_jobs_total{server="idle"} 0.0' in text
    assert 'server="gpu0"' not in text.split("medialab_burst_cost")[1]  # a local server has no burst figures
