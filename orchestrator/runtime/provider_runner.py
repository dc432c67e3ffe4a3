"""Runs one attempt on a burst provider (Comfy API v2, RunPod) through its adapter (``comfy/provider.py``), or
re-attaches to it after a crash.

Upload the inputs, submit with the attempt id as the idempotency key, and record the provider's job id at once,
in its own commit, before anything else happens (a recovered attempt looks its job up instead of submitting
again). Follow the job's status, then copy every output into the object store at once (provider URLs expire),
with lineage naming the provider and its job id.

Outcomes:
- succeeded: the outputs stored, SUCCEEDED; the GPU seconds the provider reports (else start to end) priced at
  the attempt's rate.
- the provider fails the job, refuses it, or does not answer for ``burst_unreachable_s``: the attempt ends FAILED
  (recorded, not counted against the job's max attempts) and the job goes back to the queue for the local tier
  only (``Job.local_only``). A provider that does not answer or refuses our credentials is marked down, like a
  server.
- cancel: asked of the provider, which may run the job to the end anyway (Comfy API v2 over ComfyUI 0.3.75 does):
  it is followed to its end, its GPU time counted, its outputs dropped (kept with ``burst_cancel_keep_outputs``).
- the job's timeout: the provider is asked to cancel and the job FAILS, as it would locally.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.comfy.provider import KeyAlreadyUsed, RemoteRejected, RemoteState, RemoteStatus, RemoteUnreachable
from orchestrator.core import sandbox
from orchestrator.core import templates as tpl
from orchestrator.core.errors import MediaLabError
from orchestrator.core.server_urls import redact
from orchestrator.core.states import JobState
from orchestrator.db import attempts as attempt_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import DB_ERRORS
from orchestrator.runtime import ingest
from orchestrator.runtime.graph_check import check_sandbox
from storage import StorageUnavailable

if TYPE_CHECKING:
    from orchestrator.comfy.provider import Provider, Upload
    from orchestrator.db.tables import Artifact, Attempt, Job
    from orchestrator.runtime.executor import Executor
    from orchestrator.runtime.pool import Server

log = logging.getLogger(__name__)
SUBMIT_TRIES = 3  # a submit whose outcome is unknown is sent again with the same key this often


class ProviderFailed(MediaLabError):
    """The provider could not run the job (failed it, refused it, went silent): the job goes back to local."""

    title = "Burst provider failed"

    def __init__(self, message: str, *, down: bool = False, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.down = down  # the provider itself is unhealthy (no answer, credentials refused)


class Cancelled(MediaLabError):
    title = "Cancelled"


class TimedOut(MediaLabError):
    title = "Timed out"


class ProviderRunner:
    """The burst half of the ``Executor``: it uses the executor's store, outcomes (``finish``) and events."""

    def __init__(self, executor: Executor) -> None:
        self.x = executor
        self.settings = executor.settings

    def execute(self, attempt: Attempt, job: Job, server: Server, resume: bool) -> JobState:
        assert server.provider is not None
        remote, gpu_s = server.provider, None
        try:
            t = self.x.template(job)
            if self.x.cancel_requested(job.id):
                raise Cancelled("cancelled before it was sent to the provider")
            remote_id = attempt.remote_id or (remote.find(attempt.id) if resume else None)
            if remote_id is None:
                remote_id = self._submit(remote, job, t, attempt, server)
            else:
                if attempt.remote_id is None:  # submitted before a crash, found by its key: recorded now
                    self._record(attempt, remote_id)
                self.x.event(job.id, "info", f"re-attached to {server.name}'s job {remote_id}",
                             {"provider": server.name, "remote_id": remote_id})
            status, cancelled = self._follow(remote, job, attempt, server, remote_id)
            gpu_s = status.gpu_s
            if cancelled and not (status.state == RemoteState.succeeded and self.settings.burst_cancel_keep_outputs):
                what = "ran to the end anyway; its outputs were dropped" if status.state == RemoteState.succeeded \
                    else f"ended {status.state.value}"
                raise Cancelled(f"cancelled; {server.name} {what}")
            if status.state != RemoteState.succeeded:
                raise ProviderFailed(f"{server.name} job {remote_id} {status.state.value}: "
                                     f"{status.error or 'no reason given'}", remote_id=remote_id)
            artifacts = self._ingest(remote, job, t, attempt, server, remote_id, status)
        except DB_ERRORS:
            raise  # crash recovery adopts the attempt (Executor.execute)
        except StorageUnavailable as exc:  # inputs could not be read: nothing was sent
            return self.x.wait_for_dependency(job, attempt, str(exc))
        except Cancelled as exc:
            return self.x.finish(attempt, JobState.CANCELLED, exc.message, None, gpu_s=gpu_s)
        except TimedOut as exc:
            return self.x.finish(attempt, JobState.FAILED, exc.message, {"message": exc.message}, gpu_s=gpu_s)
        except (ProviderFailed, RemoteUnreachable, RemoteRejected) as exc:
            return self._fallback(job, attempt, server, exc, gpu_s)
        except MediaLabError as exc:
            return self.x.finish(attempt, JobState.FAILED, exc.message, {"message": exc.message, **exc.extra},
                                 gpu_s=gpu_s)
        except Exception as exc:  # a bug or an unexpected answer: the job must still end (locally, if it can)
            log.exception("job %s on provider %s", job.id, redact(server.url))
            return self._fallback(job, attempt, server, ProviderFailed(f"internal error: {exc!r}"), gpu_s)
        return self.x.finish(attempt, JobState.SUCCEEDED, f"{len(artifacts)} output(s) stored from {server.name}",
                             None, artifacts, gpu_s=gpu_s)

    # -- steps -------------------------------------------------------------------------------------
    def _submit(self, remote: Provider, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server) -> str:
        """Upload the inputs, check the graph, submit it; the provider's job id is committed before returning."""
        uploads: dict[str, Upload] = {}
        names: dict[str, str] = {}
        for name, art in self.x.input_artifacts(job, t).items():
            names[name] = art.sha256 + Path(art.filename).suffix.lower()
            with self.x.store.open(art.key) as f:
                uploads[name] = remote.upload(f, names[name], art.size, art.sha256, art.content_type)
        # the graph as the provider's ComfyUI sees it: nothing may leave its folders (file names, as bound there)
        check_sandbox(tpl.bind(t, {**job.params, **names}), sandbox.Definitions.merge([server.caps]),
                      self.settings, resolve=False)
        graph = tpl.bind(t, {**job.params, **{n: u.bind for n, u in uploads.items()}})
        remote_id = None
        for n in range(SUBMIT_TRIES):
            try:
                remote_id = remote.submit(graph, attempt.id, list(uploads.values()))
                break
            except KeyAlreadyUsed:  # an earlier try landed after all
                remote_id = remote.find(attempt.id)
                if remote_id is None:
                    raise ProviderFailed(f"{server.name} holds a job submitted under this attempt's key that it "
                                         "does not list; its outputs will not be taken") from None
                break
            except RemoteUnreachable:
                if n == SUBMIT_TRIES - 1:
                    raise
                time.sleep(2 ** n)
        assert remote_id is not None
        self._record(attempt, remote_id)
        self.x.event(job.id, "info", f"submitted to {server.name} as job {remote_id}",
                     {"provider": server.name, "remote_id": remote_id, "server": redact(server.url)})
        return remote_id

    def _record(self, attempt: Attempt, remote_id: str) -> None:
        """The provider's job id, in a commit of its own before anything else happens to the attempt."""
        with self.x.db.session() as s:
            attempt_db.set_remote_id(s, attempt.id, remote_id)
            s.commit()
        attempt.remote_id = remote_id

    def _follow(self, remote: Provider, job: Job, attempt: Attempt, server: Server,
                remote_id: str) -> tuple[RemoteStatus, bool]:
        """Poll the job to its end; returns its last status and whether a cancel was asked."""
        timeout = job.timeout_s or self.settings.job_timeout_s
        deadline = time.monotonic() + timeout if timeout else None
        silent_since: float | None = None
        cancel_sent = False
        state: RemoteState | None = None
        progress: float | None = None
        while True:
            try:
                status = remote.status(remote_id)
                silent_since = None
            except RemoteUnreachable as exc:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > self.settings.burst_unreachable_s:
                    raise ProviderFailed(f"{server.name} did not answer for {self.settings.burst_unreachable_s:.0f}s"
                                         f" about job {remote_id}: {exc.message}", down=True) from exc
                status = None
            if status is not None:
                if status.state.terminal:
                    return status, cancel_sent
                if status.state != state:
                    state = status.state
                    self.x.event(job.id, "info", f"{server.name}: {state.value}", {"remote_state": state.value})
                if status.progress is not None and status.progress != progress:
                    progress = status.progress
                    try:
                        self.x.event(job.id, "progress", f"{server.name} {progress:.0%}", {"fraction": progress},
                                     progress=round(progress, 4))
                    except DB_ERRORS as exc:  # progress is worth a database blip's loss, the job is not
                        log.warning("job %s: progress event not recorded: %s", job.id, exc)
            if not cancel_sent and self.x.cancel_requested(job.id, tolerant=True):
                cancel_sent = True
                self._cancel(remote, job, server, remote_id, "cancel asked")
            if deadline and time.monotonic() > deadline:
                self._cancel(remote, job, server, remote_id, f"timed out after {timeout:.0f}s")
                raise TimedOut(f"job timed out after {timeout:.0f}s on {server.name}; cancel asked of it")
            time.sleep(self.settings.burst_poll_s)

    def _cancel(self, remote: Provider, job: Job, server: Server, remote_id: str, why: str) -> None:
        try:
            remote.cancel(remote_id)
            said = "asked"
        except MediaLabError as exc:
            said = f"could not be asked ({exc.message})"
        self.x.event(job.id, "info", f"{why}: cancel {said} of {server.name}; a provider may run the job to its "
                     "end (its GPU time is counted)", {"provider": server.name, "remote_id": remote_id})

    def _ingest(self, remote: Provider, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server,
                remote_id: str, status: RemoteStatus) -> list[Artifact]:
        """Copy the outputs of the template's output nodes into the store now (the provider's links expire);
        while the store is down, wait and try again (the GPU work is never run again for this)."""
        nodes = tpl.output_node_ids(t)
        first = next(iter(nodes))
        input_ids = [job.params[p.name] for p in t.manifest.parameters
                     if p.type in tpl.ARTIFACT_TYPES and job.params.get(p.name)]
        delay = 1.0
        while True:
            try:
                artifacts: list[Artifact] = []
                index: dict[str, int] = {}
                for out in status.outputs:
                    node = out.node_id or (first if len(nodes) == 1 else "")  # RunPod names no node
                    if node not in nodes:
                        continue
                    index[node] = index.get(node, -1) + 1
                    artifacts.append(ingest.store_stream(
                        self.x.store, remote.open_output(out), origin=f"output:{job.id}:{node}:{index[node]}",
                        filename=out.filename, **self.x.lineage(job, t, attempt, server, nodes[node], input_ids,
                                                                 remote_id)))
                if not artifacts:
                    raise ProviderFailed(f"{server.name} job {remote_id} finished without files on the output "
                                         f"nodes ({', '.join(o.node for o in t.manifest.outputs)})")
                return artifacts
            except StorageUnavailable as exc:
                if self.x.cancel_requested(job.id):
                    raise Cancelled(f"cancelled while the object store was unreachable ({exc})") from exc
                self.x.event(job.id, "info", f"object store unreachable; retrying the ingest in {delay:.0f}s",
                             {"error": str(exc)})
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- outcomes ----------------------------------------------------------------------------------
    def _local_can_run(self, job: Job) -> bool:
        """Whether a local server of the pool (healthy or not) has what the job needs."""
        if self.x.pool is None:
            return True
        try:
            req = template_db.requirements(self.x.template(job), job.params)
        except MediaLabError:
            return True
        return any(v.tier == 0 and v.can_run(req) for v in self.x.pool.views())

    def _fallback(self, job: Job, attempt: Attempt, server: Server, exc: MediaLabError,
                  gpu_s: float | None) -> JobState:
        """The provider could not run it: back to the local queue (this attempt does not count), or CANCELLED."""
        down = isinstance(exc, RemoteUnreachable) or getattr(exc, "down", False) or (
            isinstance(exc, RemoteRejected) and exc.http_status in (401, 403))
        if down and self.x.pool is not None:
            self.x.pool.mark_down(server, exc.message)
        error = {"message": exc.message, "provider": server.name, "server": redact(server.url), "transient": True}
        if self.x.cancel_requested(job.id):
            return self.x.finish(attempt, JobState.CANCELLED, f"cancelled; {exc.message}", error, gpu_s=gpu_s)
        if not self._local_can_run(job):  # only a provider can run it: an attempt that counts, and it may burst again
            return self.x.retry_or_fail(job, attempt, f"{server.name} could not run it ({exc.message})", server.url)
        return self.x.finish(attempt, JobState.QUEUED, f"{server.name} could not run it ({exc.message}); "
                             "back to the queue for local servers", error, requeue_in=0.0, counts=False,
                             gpu_s=gpu_s, local_only=True)
