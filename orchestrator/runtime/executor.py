"""Runs one attempt of a job on one ComfyUI server, start to finish, or re-attaches to it after a crash.

Upload inputs, submit with the attempt id as prompt_id, follow the server's shared websocket (asking
/history and /queue whenever it goes quiet or drops), then stream every output into the object store and
mark the job SUCCEEDED in the same transaction that records the artifacts. A server that disappears is
a transient failure: the job goes back to the queue with backoff (bounded attempts); anything
deterministic (validation, missing model, bad input, an error inside a node, a timeout) ends it FAILED.
A dependency of ours that is down (the object store before the prompt was sent) makes the job wait with
growing backoff and spends no attempt; a database error leaves the attempt to crash recovery (its lease
lapses, it is adopted and reconciled with its server), so it never loses or fails a job. A server that
stopped answering mid-prompt leaves its attempt ``abandoned``: the pool removes the prompt once it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlmodel import select

from orchestrator.comfy.client import ComfyClient, ComfyUnreachable, ComfyValidationError, output_files
from orchestrator.comfy.monitor import Subscription
from orchestrator.core import burst, sandbox
from orchestrator.core import byte_path as transport
from orchestrator.core import progress as progress_rule
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import missing
from orchestrator.core.errors import MediaLabError
from orchestrator.core.graph import title_of
from orchestrator.core.retry import RetryPolicy, outcome
from orchestrator.core.server_urls import redact
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db import templates as template_db
from orchestrator.db.engine import DB_ERRORS, Database
from orchestrator.db.tables import Artifact, Attempt, Job, JobEvent, now
from orchestrator.runtime import ingest
from orchestrator.runtime.graph_check import check_sandbox
from orchestrator.runtime.media import MediaInfo
from orchestrator.runtime.provider_runner import ProviderRunner
from orchestrator.runtime.staging import Staging, upload_name
from orchestrator.settings import Settings
from storage import ObjectStore, Pending, StorageUnavailable, StoredObject, key_for

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool, Server

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message (database errors append the statement and parameters)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class ExecutionFailed(MediaLabError):
    title = "Execution failed"


class Interrupted(MediaLabError):
    title = "Interrupted"


class ServerLost(ComfyUnreachable):
    title = "Server lost the prompt"


class Executor:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings, owner: str,
                 pool: Pool | None = None) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.owner = owner
        self.pool = pool
        self.policy = RetryPolicy(settings.max_attempts, settings.retry_base_delay_s)
        self.status_timeout_s = max(settings.event_timeout_s, 5.0)  # a server silent this long on /history is hung
        self._bytes_out = 0  # output bytes this process moved from ComfyUI into the store
        self._live: set[str] = set()
        self._live_lock = threading.Lock()
        # called with the job id once a job's final state is committed (bootstrap: its pipeline run advances)
        self.on_final: Callable[[str], object] | None = None
        self.providers = ProviderRunner(self)  # attempts on a burst provider (runtime/provider_runner.py)
        # inputs already on a server, and sent ahead of their job (runtime/staging.py)
        self.staging = Staging(store, pool, settings.stage_ahead_servers, settings.byte_path)
        self._sync = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")  # outputs made durable
        self.stopping = threading.Event()  # set by ``stop`` when this process shuts down

    @property
    def bytes_through(self) -> int:
        """Media bytes this process moved between ComfyUI and the store (inputs sent, outputs ingested)."""
        return self._bytes_out + self.staging.bytes_sent

    def stop(self) -> None:
        """This process is shutting down: an attempt whose server connection closes under it from now on is left
        RUNNING (its lease lapses; the next process adopts it and reconciles it with its server), never failed."""
        self.stopping.set()

    def _when_stopping(self) -> type[Exception] | tuple[()]:
        """What ``_execute`` catches as "stopped, not failed": every error once ``stop`` was called, else none."""
        return Exception if self.stopping.is_set() else ()

    # -- the attempts this process follows (only their leases are renewed) ---------------------------
    def hold(self, attempt_id: str) -> None:
        """This process follows the attempt from now on (the dispatcher calls it before a runner starts)."""
        with self._live_lock:
            self._live.add(attempt_id)

    def release(self, attempt_id: str) -> None:
        with self._live_lock:
            self._live.discard(attempt_id)

    def held(self) -> list[str]:
        with self._live_lock:
            return list(self._live)

    def execute(self, attempt_id: str, server: Server, resume: bool = False, job: Job | None = None,
                template: tpl.TemplateVersion | None = None) -> JobState:
        """Run (or, with ``resume``, re-attach to) an attempt this process owns; returns the job's state.
        Never raises for a job's own failures. When the database fails, the attempt is let go as it is
        (RUNNING): its lease lapses and crash recovery adopts it and reconciles it with its server. ``job``,
        ``template``: the attempt's job as its dispatcher read it and its template version, when known (not read
        again; the job's state and cancel flag are always read from the database)."""
        self.hold(attempt_id)
        try:
            return self._execute(attempt_id, server, resume, job, template)
        except DB_ERRORS as exc:
            log.warning("attempt %s: database error (%s); leaving it to crash recovery once its lease lapses",
                        attempt_id, _first_line(exc))
            return JobState.RUNNING
        finally:
            self.release(attempt_id)

    def template(self, job: Job) -> tpl.TemplateVersion:
        """The job's template version (parsed once per process: ``db.templates``)."""
        with self.db.session() as s:
            t = template_db.template_version(s, job.template_version_id)
        if t is None:
            raise ExecutionFailed(f"the template version of job {job.id} ({job.template}@v{job.version}, "
                                  f"id {job.template_version_id}) no longer exists")
        return t

    def _execute(self, attempt_id: str, server: Server, resume: bool, known_job: Job | None,
                 known_template: tpl.TemplateVersion | None) -> JobState:
        with self.db.session() as s:
            attempt = s.get(Attempt, attempt_id)
            job = known_job if known_job is not None and known_job.id == attempt.job_id else \
                job_db.get_job(s, attempt.job_id)
        if getattr(server, "provider", None) is not None:  # a burst provider (some tests pass no server)
            return self.providers.execute(attempt, job, server, resume)
        try:
            t = known_template if known_template is not None and (
                known_template.name, known_template.version) == (job.template, job.version) else self.template(job)
            history = self._reattach(job, t, attempt, server) if resume else self._run(job, t, attempt, server)
            artifacts, durable = self._ingest(job, t, attempt, server, history)
        except DB_ERRORS:
            raise  # not the job's failure: see execute
        except self._when_stopping() as exc:  # this process is shutting down under the attempt: not its failure
            log.info("attempt %s of job %s left as it is for the next process (this one is stopping: %s)",
                     attempt.id, job.id, _first_line(exc))
            return JobState.RUNNING
        except StorageUnavailable as exc:  # inputs could not be read: nothing ran yet
            return self.wait_for_dependency(job, attempt, str(exc))
        except Interrupted as exc:
            return self.finish(attempt, JobState.CANCELLED, exc.message, None)
        except ComfyValidationError as exc:
            return self.finish(attempt, JobState.FAILED, exc.message,
                                {"message": exc.message, "comfy_error": exc.error, "node_errors": exc.node_errors})
        except ComfyUnreachable as exc:
            return self._transient(job, attempt, server, exc)
        except MediaLabError as exc:
            return self.finish(attempt, JobState.FAILED, exc.message, {"message": exc.message, **exc.extra})
        except Exception as exc:  # a bug or an unexpected server answer: the job must still end
            log.exception("job %s failed", job.id)
            return self.finish(attempt, JobState.FAILED, f"internal error: {exc!r}",
                                {"message": f"internal error: {exc!r}"})
        return self.finish(attempt, JobState.SUCCEEDED, f"{len(artifacts)} output(s) stored", None, artifacts,
                           durable=durable)

    # -- steps -------------------------------------------------------------------------------------
    def _run(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server) -> dict[str, Any]:
        lacks = missing(server.caps, template_db.requirements(t, job.params)) if server.caps else []
        if lacks:  # placement checked it; this catches capabilities that changed since
            raise ExecutionFailed(f"{redact(server.url)} lacks {', '.join(lacks)}")
        inputs = self.input_artifacts(job, t)
        path, why = transport.choose(self.settings.byte_path, server.caps, self.store.bucket, t,
                                     max((a.size for a in inputs.values()), default=0))
        # both notes are written in one commit once the prompt is submitted: none on the way to the GPU
        notes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("info", f"byte path: {path.value} ({why})", {"byte_path": path.value})]
        try:
            held: list[str] = []  # inputs the server held already (not sent by this attempt)
            if path == transport.BytePath.direct:
                self._check_stored(inputs)  # the server reads them: a store that is down is a wait, not a failure
                graph = transport.direct_graph(t, {**job.params, **{name: a.key for name, a in inputs.items()}})
            else:
                graph = tpl.bind(t, self._upload_inputs(job, inputs, server, held))
            # the graph as sent, whatever path queued the job: nothing may leave the server's folders
            check_sandbox(graph, sandbox.Definitions.merge([server.caps]), self.settings, resolve=False)
            extra = {"extra_pnginfo": {"medialab": {"job": job.id, "attempt": attempt.id, "template": t.ref,
                                                    "template_hash": t.content_hash}}}
            with server.monitor.subscribe(attempt.id) as events:
                try:
                    server.client.submit(graph, attempt.id, server.monitor.client_id, extra_data=extra)
                except ComfyValidationError:
                    if not held:
                        raise
                    # a file we believed on the server is gone (its input folder was cleared): send them again
                    self.staging.forget(server, held)
                    graph = tpl.bind(t, self._upload_inputs(job, inputs, server, []))
                    server.client.submit(graph, attempt.id, server.monitor.client_id, extra_data=extra)
                notes.append(("info", "submitted", {"prompt_id": attempt.id, "server": server.url}))
                self._events(job.id, notes)
                notes = []
                return self._follow(events, job, graph, attempt, server, outputs_of=set(tpl.output_node_ids(t)),
                                    video_frames=self.video_frames(inputs))
        finally:
            if notes:  # the upload or the submit failed: the byte path is still worth knowing
                self._events(job.id, notes)

    def _reattach(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server) -> dict[str, Any]:
        """After an orchestrator crash: finished -> its history; still queued or running -> follow it;
        unknown to the server -> lost (the job is queued again)."""
        entry = self._ask(server.client, attempt.id, self.status_timeout_s)
        if entry:
            self.event(job.id, "info", "re-attached: finished while the orchestrator was down")
            return self._check_history(entry, attempt.id, None)
        self.event(job.id, "info", "re-attached to the running prompt")
        try:
            frames = self.video_frames(self.input_artifacts(job, t))
        except MediaLabError:  # an input gone since it was sent: the prompt is followed without a frame count
            frames = None
        with server.monitor.subscribe(attempt.id) as events:
            return self._follow(events, job, tpl.bind(t, {}), attempt, server, poll_s=1.0, video_frames=frames)

    def input_artifacts(self, job: Job, t: tpl.TemplateVersion) -> dict[str, Artifact]:
        """The input artifacts of the job, by parameter name."""
        with self.db.session() as s:
            return {p.name: artifact_db.get_artifact(s, job.params[p.name]) for p in t.manifest.parameters
                    if p.type in tpl.ARTIFACT_TYPES and job.params.get(p.name)}

    @staticmethod
    def video_frames(inputs: dict[str, Artifact]) -> int | None:
        """The frame count of the job's video input (None: none, or not known), read once an attempt."""
        return progress_rule.video_frames((a.content_type, a.frames) for a in inputs.values() if a is not None)

    def _check_stored(self, inputs: dict[str, Artifact]) -> None:
        """Every input is in the store (StorageUnavailable when the store does not answer)."""
        for name, art in inputs.items():
            if self.store.size(art.key) is None:
                raise ExecutionFailed(f"input {name}: artifact {art.id} ({art.key}) is missing from the object store")

    def _upload_inputs(self, job: Job, inputs: dict[str, Artifact], server: Server, held: list[str]) -> dict[str, Any]:
        """Through path: each input onto the server (unless it holds it already: ``held`` gets those names);
        returns the values to bind."""
        values = dict(job.params)
        for name, art in inputs.items():
            values[name], was_there = self.staging.put(server, art)  # the bytes it sends count in bytes_through
            if was_there:
                held.append(upload_name(art))
        return values

    def _follow(self, events: Subscription, job: Job, graph: dict[str, Any], attempt: Attempt, server: Server,
                poll_s: float | None = None, outputs_of: set[str] | None = None,
                video_frames: int | None = None) -> dict[str, Any]:
        """Follow the prompt to its end; returns its /history entry.

        Events come from the server's websocket. When they stop for ``poll_s`` seconds, or the socket
        drops, the server is asked directly (/history is {} for running and unknown alike, so /queue
        decides), and from a drop on it is polled every second. When the socket saw the prompt succeed and
        an ``executed`` event of every node in ``outputs_of``, those outputs stand in for /history (one
        round trip less between the GPU finishing and the outputs moving). A progress event says the node's ETA,
        and frames done/total when the node is a frame loop over the job's video of ``video_frames`` frames
        (``core/progress.py``).
        """
        pid, client = attempt.id, server.client
        titles = {k: title_of(v) or v["class_type"] for k, v in graph.items()}
        classes = {k: v.get("class_type") for k, v in graph.items()}
        started: dict[str, tuple[float, int, int]] = {}  # node -> (time, value, max) of its first progress message
        timeout = job.timeout_s or self.settings.job_timeout_s
        deadline = time.monotonic() + timeout if timeout else None
        quiet_limit = poll_s or self.settings.event_timeout_s
        quiet_since = time.monotonic()
        last_progress = 0.0
        checked_at = time.monotonic()  # cancel and timeout are checked every 0.5 s, not on the way to the GPU
        done: set[str] = set()
        seen: dict[str, Any] = {}  # node id -> ui output, from executed events
        succeeded = False
        interrupting: str | None = None  # why, once the prompt is being interrupted
        try:
            while True:
                try:
                    event = events.recv(timeout=min(1.0, quiet_limit))
                except ComfyUnreachable:
                    event, quiet_limit, quiet_since = None, 1.0, 0.0  # poll from now on, starting now
                if not interrupting and time.monotonic() - checked_at > 0.5:
                    checked_at = time.monotonic()
                    reason = ("cancelled" if self.cancel_requested(job.id, tolerant=True) else
                              f"timed out after {timeout:.0f}s" if deadline and time.monotonic() > deadline else None)
                    if reason:
                        interrupting, quiet_limit = reason, 1.0
                        client.delete_queued(pid)
                        client.interrupt(pid)  # only ever by prompt_id: never someone else's job
                        self.event(job.id, "info", f"interrupting: {reason}")
                if event is None:
                    if time.monotonic() - quiet_since >= quiet_limit:
                        try:
                            entry = self._ask(client, pid, self.status_timeout_s)
                        except ServerLost:
                            if interrupting:  # removed from the queue before it ran
                                raise Interrupted("cancelled; removed from the server's queue") from None
                            raise
                        if entry:
                            return self._check_history(entry, pid, interrupting)
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                data = event.get("data") or {}
                kind = event.get("type")
                if kind == "execution_cached":
                    done.update(data.get("nodes") or [])
                elif kind == "executed" and data.get("output") is not None:
                    seen[str(data.get("node"))] = data["output"]
                elif kind == "execution_success":
                    succeeded = True
                elif kind == "executing" and data.get("node") is None:
                    if succeeded and not interrupting and outputs_of and outputs_of <= seen.keys():
                        return {"outputs": seen, "status": {"status_str": "success", "completed": True}}
                    return self._check_history(client.history(pid, self.status_timeout_s) or {}, pid, interrupting)
                elif kind == "executing":
                    done.add(data["node"])
                elif kind == "progress":
                    node, at = str(data.get("node")), time.monotonic()
                    first = started.get(node)
                    if first is None or data["max"] != first[2] or data["value"] < first[1]:  # a new bar
                        first = started[node] = (at, data["value"], data["max"])
                    if data["value"] < data["max"] and at - last_progress <= 0.2:
                        continue
                    last_progress = at
                    fraction = round(max((len(done) - 1 + data["value"] / max(data["max"], 1)) / len(graph), 0.0), 4)
                    p = progress_rule.node_progress(classes.get(node), data["value"], data["max"], video_frames,
                                                    at - first[0], first[1])
                    try:  # progress is worth a database blip's loss, the prompt is not
                        self.event(job.id, "progress", progress_rule.describe(titles.get(node, node), p),
                                    {"node": node, "title": titles.get(node), "value": data["value"],
                                     "max": data["max"], "fraction": fraction, **p.data}, progress=fraction)
                    except DB_ERRORS as exc:
                        log.warning("job %s: progress event not recorded: %s", job.id, _first_line(exc))
                elif kind == "execution_error":
                    node = str(data.get("node_id"))
                    raise ExecutionFailed(
                        f"node '{titles.get(node, node)}' (#{node} {data.get('node_type')}) failed: "
                        f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}",
                        node_id=node, node_type=data.get("node_type"), exception_type=data.get("exception_type"),
                        exception_message=data.get("exception_message"))
                elif kind == "execution_interrupted":
                    raise Interrupted("cancelled; ComfyUI confirmed the interruption")
        except Interrupted:
            if interrupting and interrupting != "cancelled":
                raise ExecutionFailed(f"job {interrupting}; interrupted on {redact(server.url)}") from None
            raise

    @staticmethod
    def _ask(client: ComfyClient, pid: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The prompt's /history entry once finished, None while queued or running; ServerLost when the
        server does not know it (/history is {} for running and unknown alike, so /queue decides);
        ComfyUnreachable when it does not answer within ``timeout`` (hung)."""
        entry = client.history(pid, timeout)
        if entry:
            return entry
        if client.queue_position(pid, timeout) is not None:
            return None
        entry = client.history(pid, timeout)  # it may have finished between the two calls
        if entry:
            return entry
        raise ServerLost(f"{redact(client.base_url)} does not know prompt {pid} (it never arrived, or the server "
                         "restarted)")

    @staticmethod
    def _check_history(entry: dict[str, Any], pid: str, interrupting: str | None) -> dict[str, Any]:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            msgs = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
            if interrupting or any(m[0] == "execution_interrupted" for m in msgs):
                raise Interrupted("cancelled; ComfyUI confirmed the interruption")
            detail = msgs[-1][1] if msgs else {}
            raise ExecutionFailed(f"prompt {pid} failed: {detail.get('exception_type', '')}: "
                                  f"{detail.get('exception_message', '').strip()}", node_id=detail.get("node_id"))
        if not entry:
            raise ExecutionFailed(f"prompt {pid} finished but its history is missing")
        return entry

    def _ingest(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server,
                history: dict[str, Any]) -> tuple[list[Artifact], list[Pending]]:
        """Store the outputs (their rows, and their objects still to be made durable before the rows commit:
        ``finish``); while the object store is unreachable, wait and try again (the outputs wait on the ComfyUI
        server: the GPU work is never run again for this)."""
        delay = 1.0
        while True:
            try:
                return self._collect(job, t, attempt, server, history)
            except StorageUnavailable as exc:
                if self.cancel_requested(job.id):
                    raise Interrupted(f"cancelled while the object store was unreachable ({exc})") from exc
                self.event(job.id, "info", f"object store unreachable; retrying the ingest in {delay:.0f}s",
                            {"error": str(exc)})
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _collect(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server,
                 history: dict[str, Any]) -> tuple[list[Artifact], list[Pending]]:
        """Stream every file of the template's output nodes (any kind: images, gifs, video, audio) into
        the store. Origins are per job, so whichever attempt made them, a job has one set of outputs."""
        artifacts: list[Artifact] = []
        durable: list[Pending] = []
        input_ids = [job.params[p.name] for p in t.manifest.parameters
                     if p.type in tpl.ARTIFACT_TYPES and job.params.get(p.name)]
        outputs = history.get("outputs") or {}
        try:
            for node_id, name in tpl.output_node_ids(t).items():
                ui = outputs.get(node_id) or {}
                origin = f"output:{job.id}:{node_id}"  # and the file's index on the node
                lineage = self.lineage(job, t, attempt, server, name, input_ids)
                if "medialab_objects" in ui:
                    artifacts += self._direct_objects(ui, origin, lineage)
                else:
                    artifacts += [art for art, _pending in self._stream_outputs(ui, server, origin, lineage, durable)]
            if not artifacts:
                raise ExecutionFailed(f"{t.ref} finished without files on its output nodes "
                                      f"({', '.join(o.node for o in t.manifest.outputs)})")
        except BaseException:
            for pending in durable:  # written but never named by a row: dropped (a retried ingest writes them again)
                pending.abort()
            raise
        return artifacts, durable

    @staticmethod
    def lineage(job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server, output_name: str,
                input_ids: list[str], remote_id: str | None = None) -> dict[str, Any]:
        """The lineage fields of one output artifact (with the provider and its job id on a burst tier)."""
        burst = server.tier > 0
        return dict(role="output", job_id=job.id, attempt_id=attempt.id, output_name=output_name, template=t.name,
                    template_version=t.version, template_hash=t.content_hash, params=job.params,
                    input_artifacts=input_ids, server=server.url,
                    comfy_version=attempt.comfy_version or server.comfy_version,
                    provider=server.name if burst else None,
                    remote_job_id=(remote_id or attempt.remote_id or attempt.id) if burst else None)

    def _stream_outputs(self, ui: dict[str, Any], server: Server, origin: str, lineage: dict[str, Any],
                        durable: list[Pending]) -> Iterator[tuple[Artifact, Pending]]:
        """Through path: stream each file from /view into the store (never whole in memory), sniffed there; each
        object's ``Pending`` goes into ``durable`` as soon as it is written (aborted if the ingest fails)."""
        for index, ref in enumerate(output_files(ui)):
            art, pending = ingest.stage_stream(self.store, server.client.stream_view(ref),
                                               origin=f"{origin}:{index}", filename=ref.filename, **lineage)
            durable.append(pending)
            self._bytes_out += art.size
            yield art, pending

    def _direct_objects(self, ui: dict[str, Any], origin: str, lineage: dict[str, Any]) -> Iterator[Artifact]:
        """Direct path: the pack stored the objects; check each is there, whole, under its own hash."""
        for index, obj in enumerate(ui["medialab_objects"]):
            key, sha, size = obj.get("key"), obj.get("sha256", ""), obj.get("size")
            if key != key_for(sha):
                raise ExecutionFailed(f"the server reported object {key!r}, which is not the key of sha256 {sha}")
            stored = self.store.size(key)
            if stored != size:
                raise ExecutionFailed(f"output object {key} is {'missing' if stored is None else f'{stored} bytes'}"
                                      f" in the store; the server reported {size} bytes")
            info = MediaInfo(obj.get("content_type") or "application/octet-stream", obj.get("width"),
                             obj.get("height"))  # recognised by the pack, next to the bytes
            yield ingest.artifact(StoredObject(key, sha, size), info, origin=f"{origin}:{index}",
                                  filename=obj.get("filename") or sha, **lineage)

    # -- outcomes ----------------------------------------------------------------------------------
    def _transient(self, job: Job, attempt: Attempt, server: Server, exc: ComfyUnreachable) -> JobState:
        """The server went away. Unless it answered that it does not know the prompt (ServerLost), the prompt
        may still be there and run when the server wakes up: the attempt is left ``abandoned``, and the pool
        removes or interrupts that prompt once the server answers again (never the work done twice)."""
        abandoned = not isinstance(exc, ServerLost)
        if self.pool is not None:
            self.pool.mark_down(server, exc.message)
        state = self.retry_or_fail(job, attempt, exc.message, server.url, abandoned=abandoned,
                                   local_only=server.tier > 0)
        if abandoned and self.pool is not None:
            self.pool.note_abandoned(server)
        return state

    def lost(self, attempt_id: str, message: str) -> JobState:
        """An adopted attempt whose server left the pool: retry the job elsewhere."""
        with self.db.session() as s:
            attempt = s.get(Attempt, attempt_id)
            job = job_db.get_job(s, attempt.job_id)
        return self.retry_or_fail(job, attempt, message, attempt.server)

    def retry_or_fail(self, job: Job, attempt: Attempt, message: str, server_url: str,
                      abandoned: bool = False, local_only: bool = False) -> JobState:
        """The server went away: queue the job again with backoff while attempts are left (only attempts that
        count are counted: not those that waited for a dependency of ours); the rule is ``retry.outcome``.
        ``local_only``: it was a burst server, so the job runs locally from now on."""
        error = {"message": message, "server": server_url, "transient": True}
        cancel = self.cancel_requested(job.id)
        with self.db.session() as s:
            spent = attempt_db.counted_attempts(s, job.id)  # this one included: it is still RUNNING and counts
        out = outcome(self.policy, cancel_requested=cancel, spent=spent)
        if out.state == JobState.CANCELLED:
            reason = f"cancelled; {message}"
        elif out.state == JobState.FAILED:
            reason = f"gave up after {spent} attempts; last: {message}"
        else:
            reason = f"attempt {attempt.number} lost ({message}); retrying in {out.delay_s:.0f}s"
        return self.finish(attempt, out.state, reason, error, requeue_in=out.delay_s, abandoned=abandoned,
                           local_only=local_only)

    def wait_for_dependency(self, job: Job, attempt: Attempt, message: str) -> JobState:
        """A dependency of ours (the object store) is down before anything ran: the job waits, queued again
        with growing backoff (capped) and the reason in its events; the attempt does not count."""
        error = {"message": message, "dependency": True}
        cancel = self.cancel_requested(job.id)
        with self.db.session() as s:
            waits = attempt_db.waits_in_a_row(s, job.id, attempt.number) + 1
        out = outcome(self.policy, cancel_requested=cancel, waits=waits)
        reason = (f"cancelled while waiting; {message}" if out.state == JobState.CANCELLED
                  else f"waiting: {message}; looking again in {out.delay_s:g}s")
        return self.finish(attempt, out.state, reason, error, requeue_in=out.delay_s, counts=False)

    def finish(self, attempt: Attempt, state: JobState, reason: str, error: dict[str, Any] | None,
                artifacts: list[Artifact] | None = None, requeue_in: float | None = None, *,
                counts: bool = True, abandoned: bool = False, gpu_s: float | None = None,
                local_only: bool = False, durable: Sequence[Pending] = ()) -> JobState:
        """End the attempt and move its job, in one commit. ``gpu_s``: the provider's billed seconds (default: from
        the attempt's start to now), priced at the attempt's rate; ``local_only``: requeued for the local tier;
        ``durable``: the artifacts' objects, made durable (in other threads, while the rows are written) before
        the commit that names them."""
        gpu_s = burst.seconds_between(attempt.started_at, now()) if gpu_s is None else gpu_s
        syncing = [self._sync.submit(pending.commit) for pending in durable]
        with self.db.session() as s:
            attempt_state = JobState.FAILED if state == JobState.QUEUED else state
            if not attempt_db.finish_attempt(s, attempt.id, self.owner, attempt_state, error, counts=counts,
                                          abandoned=abandoned, gpu_s=gpu_s,
                                          cost=burst.actual_cost(attempt.rate, gpu_s)):
                s.rollback()
                log.warning("attempt %s is no longer ours; leaving job %s alone", attempt.id, attempt.job_id)
                return job_db.get_job(s, attempt.job_id).state
            known = {a.origin for a in s.exec(select(Artifact).where(Artifact.job_id == attempt.job_id))}
            s.add_all(a for a in artifacts or [] if a.origin not in known)
            if requeue_in is not None:
                moved = job_db.requeue(s, attempt.job_id, reason, requeue_in, local_only=local_only)
            else:
                data = {"outputs": [a.id for a in artifacts]} if artifacts else error
                extra: dict[str, Any] = {"progress": 1.0} if state == JobState.SUCCEEDED else {}
                moved = job_db.transition(s, attempt.job_id, JobState.RUNNING, state, reason, data, error=error,
                                          **extra)
            if not moved:
                s.rollback()
                log.warning("job %s was no longer RUNNING when attempt %s ended", attempt.job_id, attempt.id)
                return job_db.get_job(s, attempt.job_id).state
            for done in syncing:  # an object is durable before the row that names it
                done.result()
            s.commit()
        if state.terminal and self.on_final is not None:
            try:
                self.on_final(attempt.job_id)
            except Exception:  # the job has ended either way; the dispatcher's sweep tries again
                log.exception("job %s: the hook after its end failed", attempt.job_id)
        return state

    # -- bookkeeping ------------------------------------------------------------------------------
    def cancel_requested(self, job_id: str, tolerant: bool = False) -> bool:
        """``tolerant``: a database error reads as "not (yet)" (asked again soon) instead of raising."""
        try:
            with self.db.session() as s:
                return bool(job_db.get_job(s, job_id).cancel_requested)
        except DB_ERRORS as exc:
            if not tolerant:
                raise
            log.warning("job %s: cancel flag not read: %s", job_id, _first_line(exc))
            return False

    def _events(self, job_id: str, events: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Several (kind, reason, data) events of a job in one commit."""
        with self.db.session() as s:
            s.add_all(JobEvent(job_id=job_id, kind=kind, reason=reason, data=data) for kind, reason, data in events)
            s.commit()

    def event(self, job_id: str, kind: str, reason: str, data: dict[str, Any] | None = None, **fields: Any) -> None:
        with self.db.session() as s:
            job_db.add_event(s, job_id, kind, reason, data, **fields)
            s.commit()
