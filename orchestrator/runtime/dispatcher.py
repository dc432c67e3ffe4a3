"""Dispatch: fair job order, placement on capable servers, runners, leases and crash recovery.

One dispatch loop per orchestrator process. Each round it counts the prompts in flight per server
(from the database, so replicas see each other's), locks a batch of ready QUEUED jobs (SKIP LOCKED on
PostgreSQL), orders them (priority, fair share across API keys, age), places each on the best server
with a free slot, and claims it with its attempt in the same transaction. Runners (threads) then
execute the attempts. A lease loop renews the leases of the attempts this process lifetime follows
(started or adopted, and still followed by a runner) and adopts attempts whose process stopped renewing
(crashed): those are reconciled with their server, never run twice.

One job never stalls a round: a job whose requirements cannot even be computed (its template row gone,
parameters that no longer bind) and a job that no registered server could ever run end FAILED with the
reason; every other job of the round is placed as usual.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import Session, select

from orchestrator.core import burst
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Requirements
from orchestrator.core.errors import MediaLabError
from orchestrator.core.placement import Candidate, Placer, ServerView, fair_order, impossible_reason, place
from orchestrator.core.server_urls import redact
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import DB_ERRORS, Database
from orchestrator.db.notify import QUEUED
from orchestrator.db.tables import Job, ServerRow, now
from orchestrator.runtime.executor import Executor
from orchestrator.runtime.metrics import Metrics
from orchestrator.runtime.pool import Pool, Server
from orchestrator.runtime.worker_lock import load_lock
from orchestrator.settings import Settings
from orchestrator.training.db.leases import leased_gpus

log = logging.getLogger(__name__)
BATCH = 100  # queued jobs a dispatch round considers at least (the window warm-model affinity chooses from)
MAX_BATCH = 2000  # at most: a round considers as many jobs as there are free slots, up to this
SWEEP_S = 5.0  # while no server has a free slot, a round still runs this often to end impossible jobs
MEANS_S = 30.0  # templates' mean run times (the burst estimates) are read again this often


@dataclasses.dataclass(frozen=True)
class Placement:
    """A job placed on a server, with its attempt started (RUNNING) and held by this process."""

    job: Job
    attempt_id: str
    server: Server
    req: Requirements


class Dispatcher:
    def __init__(self, db: Database, pool: Pool, executor: Executor, settings: Settings,
                 metrics: Metrics | None = None, poll_s: float = 0.5,
                 lease_hooks: Sequence[Callable[[Session], object]] = ()) -> None:
        """``lease_hooks``: run in the lease loop of a recovering dispatcher, each in a session of its own
        (the composition root registers the expiry of training claims whose trainer went silent)."""
        self.db = db
        self.pool = pool
        self.executor = executor
        self.settings = settings
        self.metrics = metrics
        self.poll_s = poll_s
        self.lease_hooks = list(lease_hooks)
        self.lock = load_lock() if settings.require_lock else None  # MEDIALAB_REQUIRE_LOCK: worker.lock.toml
        self.owner = executor.owner
        self._runners = ThreadPoolExecutor(max_workers=settings.runner_threads, thread_name_prefix="attempt")
        self.placer = Placer(settings.placement, settings.max_inflight, settings.placement_max_bypass, self.lock)
        self.policy = burst.BurstPolicy.of(settings)
        self.budget = burst.Budget.of(settings)
        self._noted: dict[str, str] = {}  # job -> why it did not burst, as last said in its events
        self._means: tuple[float, dict[str, float]] = (0.0, {})  # (when read, template -> mean run seconds)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        self._more = False  # the last round filled its whole batch: more jobs may be waiting behind it
        self._swept = 0.0  # when the last full round ran

    def start(self, dispatch: bool = True, recover: bool = True) -> Dispatcher:
        """``dispatch=False, recover=False`` only renews this process's leases (``medialab run``)."""
        self.recovering = recover
        if dispatch:  # a job queued by this process (API, retry) wakes the loop; others' jobs: the poll
            self._unsubscribe = self.db.bell.subscribe(QUEUED, self.wake)
        loops = [(self._lease_loop, "leases")] + ([(self._dispatch_loop, "dispatch")] if dispatch else [])
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wake(self) -> None:
        """A job was queued or a slot freed: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._unsubscribe()
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._runners.shutdown(wait=False, cancel_futures=True)

    # -- dispatch ----------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                launched = self.dispatch_once()
            except Exception:
                log.exception("dispatch round")
                launched = 0
            if not launched or not self._more:  # look again at once only when the batch was full and all placed
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def requirements(self, session: Session, job: Job,
                     known: dict[int, tpl.TemplateVersion] | None = None) -> Requirements:
        """What the job needs from a server (versions and requirements are cached process-wide, in
        ``db.templates``); ``known``: the versions a round has found so far (``template_db.parsed_versions``;
        one read here joins them)."""
        t = (known or {}).get(job.template_version_id) if job.template_version_id is not None else None
        if t is None:
            t = template_db.template_version(session, job.template_version_id)
            if t is not None and known is not None and job.template_version_id is not None:
                known[job.template_version_id] = t
        if t is None:
            raise MediaLabError(f"its template version ({job.template}@v{job.version}, id "
                                f"{job.template_version_id}) no longer exists")
        return template_db.requirements(t, job.params)

    def dispatch_once(self) -> int:
        """One round; returns how many attempts it started."""
        with self.db.session() as s:
            if not job_db.any_ready(s, "comfy"):  # the common wake-up (a slot freed, a poll): one cheap query
                return 0
            attempt_db.lock_round(s)  # replicas place one round at a time, on the counts read under it (PostgreSQL)
            views = self.views(s)
            max_inflight = self.settings.max_inflight
            local = [v for v in views if v.tier == 0]
            free = [v for v in views if v.healthy and v.active and v.inflight < (
                max_inflight if v.tier == 0 else v.max_inflight or max_inflight)]
            if (not any(v.tier == 0 or self.policy.templates for v in free)
                    and time.monotonic() - self._swept < SWEEP_S):  # no free slot: only look for impossible jobs
                return 0
            self._swept = time.monotonic()
            slots = sum((max_inflight if v.tier == 0 else v.max_inflight or max_inflight) - v.inflight for v in free)
            batch = min(max(BATCH, slots), MAX_BATCH)  # a big pool's free slots are filled in one round, one pass
            jobs = {j.id: j for j in job_db.queued_candidates(s, limit=batch)}
            order = fair_order([Candidate(j.id, j.priority, j.api_key_id, j.queued_at) for j in jobs.values()],
                               job_db.running_by_key(s))
            known = template_db.parsed_versions(s, {j.template_version_id for j in jobs.values()})
            reqs: dict[str, Requirements] = {}
            for c in order:
                try:
                    reqs[c.id] = self.requirements(s, jobs[c.id], known)
                except DB_ERRORS:
                    raise  # the database, not the job: the round is retried
                except Exception as exc:  # the job's own data is broken: it ends, the round goes on
                    self._fail_queued(s, c.id, f"cannot be dispatched: {_describe(exc)}")
            order = [c for c in order if c.id in reqs]
            plan = self.placer.plan([(c.id, c.priority, reqs[c.id]) for c in order], local)  # local tier first
            placed = {job_id for job_id, _view in plan}
            waiting = [c for c in order if c.id not in placed]
            bursts = self._burst_plan(s, waiting, jobs, reqs, views) if waiting and len(local) < len(views) else []
            placed |= {job_id for job_id, _choice in bursts}
            self._more = len(jobs) >= batch and len(placed) == len(jobs)
            waiting = [c for c in waiting if c.id not in placed]
            registry = self._registry_views(s, views) if waiting else None
            if registry is not None:
                reasons: dict[tuple[Requirements, bool], str | None] = {}
                for c in waiting:
                    job = jobs[c.id]
                    may_burst = not job.local_only and self.policy.allowed(job.template, job.version)
                    if (reqs[c.id], may_burst) not in reasons:
                        reasons[reqs[c.id], may_burst] = impossible_reason(
                            reqs[c.id], [v for v in registry if may_burst or v.tier == 0], self.lock)
                    if reasons[reqs[c.id], may_burst]:
                        self._fail_queued(s, c.id, reasons[reqs[c.id], may_burst])
            wanted: list[tuple[Job, ServerView, Requirements, str, float]] = [
                (jobs[job_id], view, reqs[job_id], "dispatched", 0.0) for job_id, view in plan]
            for job_id, choice in bursts:
                assert choice.server is not None
                wanted.append((jobs[job_id], choice.server, reqs[job_id],
                               f"burst to {choice.server.name}: {choice.reason}", choice.estimate))
            launched = self._claim(s, wanted)  # the whole round's claims in one pass
            s.commit()
        for placement in launched:
            self._launched(placement)
            self._runners.submit(self._run, placement.attempt_id, placement.server, False, placement.job,
                                 known.get(placement.job.template_version_id or -1))
        return len(launched)

    def _burst_plan(self, session: Session, waiting: list[Candidate], jobs: dict[str, Job],
                    reqs: dict[str, Requirements], views: list[ServerView]) -> list[tuple[str, burst.BurstChoice]]:
        """The waiting jobs (in dispatch order) that go to a burst tier now (``core/burst.py`` decides each);
        a job that would burst but may not (a budget, the providers' capacity) says why in its events, once."""
        candidates = {c.id for c in waiting if not jobs[c.id].local_only
                      and self.policy.allowed(jobs[c.id].template, jobs[c.id].version)}
        self._noted = {k: v for k, v in self._noted.items() if k in candidates}
        if not candidates:
            return []
        local = [v for v in views if v.tier == 0]
        providers = [v for v in views if v.tier > 0]
        spend = attempt_db.burst_spend(session, *burst.windows(now()))
        means = self._mean_run_s(session, {jobs[i].template for i in candidates})
        out: list[tuple[str, burst.BurstChoice]] = []
        staying = 0  # waiting jobs ahead that stay in the local queue
        for c in waiting:
            job, req = jobs[c.id], reqs[c.id]
            if c.id not in candidates:
                staying += 1
                continue
            capable = [v for v in local if v.healthy and v.active and not v.gpu_leased and v.can_run(req, self.lock)]
            run_s = means.get(job.template, self.settings.burst_default_run_s)
            wait = burst.local_wait_s(sum(v.inflight for v in capable) + staying, len(capable), run_s)
            choice = burst.choose(req, wait, self.policy.threshold(job.template, job.version, job.priority),
                                  providers, self.budget, spend, job.api_key_id, run_s, self.settings.max_inflight,
                                  self.lock)
            if choice.server is not None:
                out.append((c.id, choice))
                choice.server.inflight += 1
                spend.add(job.api_key_id, choice.estimate)
                continue
            staying += 1
            if choice.blocked and self._noted.get(c.id) != (topic := choice.reason.split(" (")[0]):
                self._noted[c.id] = topic
                job_db.add_event(session, c.id, "info", f"not bursting: {choice.reason}; waiting for local capacity",
                                 {"burst": "blocked", "estimate": round(choice.estimate, 6)})
        return out

    def _mean_run_s(self, session: Session, templates: set[str]) -> dict[str, float]:
        """Templates' mean run seconds (``attempts.mean_run_s``), read again at most every ``MEANS_S``."""
        at, means = self._means
        if time.monotonic() - at > MEANS_S or not templates <= means.keys():
            means = attempt_db.mean_run_s(session, templates)
            self._means = (time.monotonic(), means)
        return means

    def views(self, session: Session) -> list[ServerView]:
        """The pool's servers as placement sees them now: the prompts in flight on each (from the database,
        so replicas see each other's) and whether a trainer holds its GPU (no inference goes there meanwhile)."""
        views = self.pool.views(attempt_db.inflight_by_server(session))
        leased = leased_gpus(session, self.settings.trainer_lease_s)
        for v in views:
            v.gpu_leased = v.url in leased
        self._shared_warm(session, views)
        return views

    def _shared_warm(self, session: Session, views: list[ServerView]) -> None:
        """A server's warm models as the database says: those of the job started there last among the ones
        running on it, whichever replica sent it (this process's pool knows only its own dispatches)."""
        latest = attempt_db.latest_running_jobs(session)
        known = template_db.parsed_versions(session, {version_id for version_id, _params in latest.values()})
        for v in views:
            if v.url not in latest:
                continue
            version_id, params = latest[v.url]
            try:
                t = known.get(version_id) if version_id is not None else None
                t = t or template_db.template_version(session, version_id)
                if t is not None:
                    v.warm = template_db.requirements(t, params).models or v.warm
            except DB_ERRORS:
                raise
            except Exception:  # a job whose template no longer binds: its server's models stay as last noted
                log.debug("warm models of %s", redact(v.url), exc_info=True)

    def place_now(self, job_id: str, reason: str = "dispatched") -> Placement | None:
        """Place one queued job at once and start its attempt, for a caller that runs it itself (``medialab
        run`` follows it in the foreground). The views, requirements, worker lock and claim of a dispatch
        round, but on the best server that can run the job however busy it is (ComfyUI queues the prompt
        behind the work there) rather than waiting for a free slot. None when no healthy server can run it
        now (it stays QUEUED) or another dispatcher took it first."""
        with self.db.session() as s:
            job = job_db.get_job(s, job_id)
            req = self.requirements(s, job)
            view = place(req, [v for v in self.views(s) if v.tier == 0], max_inflight=sys.maxsize, lock=self.lock)
            placement = next(iter(self._claim(s, [(job, view, req, reason, 0.0)])), None) if view is not None else None
            s.commit()
        if placement is not None:
            self._launched(placement)
        return placement

    def _claim(self, session: Session,
               wanted: Sequence[tuple[Job, ServerView, Requirements, str, float]]) -> list[Placement]:
        """Start the attempts of (job, server view, requirements, reason, cost estimate) in ``session``, all in
        one pass (``attempts.start_attempts``: one guarded UPDATE, one INSERT of attempts, one of events; the
        caller commits); left out: a job whose server left the pool since the views were taken (next round) and
        one another dispatcher got first."""
        servers = {view.url: server for _job, view, _req, _reason, _estimate in wanted
                   if (server := self.pool.get(view.url)) is not None}
        todo = [w for w in wanted if w[1].url in servers]
        won = attempt_db.start_attempts(session, [
            attempt_db.Claim(job.id, view.url, self.owner, self.settings.lease_s, servers[view.url].comfy_version,
                             reason, tier=servers[view.url].tier, rate=servers[view.url].rate, estimate=estimate)
            for job, view, _req, reason, estimate in todo])
        return [Placement(job, won[job.id], servers[view.url], req)
                for job, view, req, _reason, _estimate in todo if job.id in won]

    def _launched(self, placement: Placement) -> None:
        """After the commit: this process follows the attempt (its lease is renewed from now on, while it
        waits for a runner too) and the server is noted as holding the job's models."""
        self.executor.hold(placement.attempt_id)
        self.pool.note_dispatch(placement.server, placement.req.models)
        if self.metrics:
            self.metrics.dispatch_latency.observe(max(time.time() - placement.job.queued_at.timestamp(), 0.0))

    def _registry_views(self, session: Session, views: list[ServerView]) -> list[ServerView] | None:
        """The views of every registered server, as candidates for "could this job ever run": a draining
        server counts (it may be activated again). None while the live pool has not caught up with the
        registry (a server added a moment ago may be the one the job needs): nothing is decided then."""
        registered = set(session.exec(select(ServerRow.id)).all())
        if not registered - self.pool.unusable() <= {v.id for v in views}:
            return None
        return [dataclasses.replace(v, active=True) for v in views if v.id in registered]

    def _fail_queued(self, session: Session, job_id: str, reason: str) -> None:
        """A queued job that can never run ends FAILED with the reason (in the round's transaction)."""
        log.warning("job %s failed before dispatch: %s", job_id, redact(reason))
        job_db.transition(session, job_id, JobState.QUEUED, JobState.FAILED, reason, error={"message": reason})

    def _run(self, attempt_id: str, server: Server, resume: bool, job: Job | None = None,
             template: tpl.TemplateVersion | None = None) -> None:
        try:
            self.executor.execute(attempt_id, server, resume=resume, job=job, template=template)
        except Exception:
            log.exception("attempt %s", attempt_id)
        finally:
            self.wake()  # a slot is free

    # -- leases and recovery -------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        if self.recovering:
            self.recover()
        while not self._stop.wait(max(self.settings.lease_s / 3, 0.5)):
            try:
                with self.db.session() as s:  # only the attempts a runner of this lifetime follows
                    attempt_db.heartbeat(s, self.owner, self.settings.lease_s, self.executor.held())
                    s.commit()
                if self.recovering:
                    self.recover()
                    for hook in self.lease_hooks:
                        with self.db.session() as s:
                            hook(s)
            except Exception:
                log.exception("lease loop")

    def recover(self) -> int:
        """Adopt attempts whose orchestrator stopped (crash, kill -9) and reconcile each with its server:
        finished -> ingest its outputs; still queued or running -> follow it; unknown -> queue the job
        again. Attempts on a server no longer in the pool count as lost."""
        with self.db.session() as s:
            orphans = attempt_db.adopt_orphans(s, self.owner, self.settings.lease_s)
            s.commit()  # adopted (and said so in their events) before anything follows them
        for attempt in orphans:
            server = self.pool.get(attempt.server)
            log.warning("adopting attempt %s of job %s on %s", attempt.id, attempt.job_id, redact(attempt.server))
            self.executor.hold(attempt.id)
            if server is None:
                self._runners.submit(self._lost, attempt.id, attempt.server)
            else:
                self._runners.submit(self._run, attempt.id, server, True)
        return len(orphans)

    def _lost(self, attempt_id: str, url: str) -> None:
        try:
            self.executor.lost(attempt_id, f"server {redact(url)} left the pool")
        except Exception:
            log.exception("attempt %s", attempt_id)
        finally:
            self.executor.release(attempt_id)
            self.wake()


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, MediaLabError) else f"{type(exc).__name__}: {exc}"
