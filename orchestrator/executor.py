"""Runs one claimed (RUNNING) job on one ComfyUI server, start to finish.

Upload inputs, submit with the attempt id as prompt_id, follow the websocket (asking /history and
/queue when it goes quiet), then stream every output into the object store and mark the job
SUCCEEDED in the same transaction that records the artifacts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlmodel import func, select

from orchestrator import service
from orchestrator import templates as tpl
from orchestrator.comfy.client import ComfyUnreachable, ComfyValidationError, EventStream, output_files
from orchestrator.db import Database
from orchestrator.errors import MediaLabError
from orchestrator.jobs import JobState
from orchestrator.models import Artifact, Attempt, Job, TemplateVersionRow, now
from orchestrator.pool import MissingModels, Server
from orchestrator.settings import Settings
from storage import ObjectStore

log = logging.getLogger(__name__)


class ExecutionFailed(MediaLabError):
    title = "Execution failed"


class Interrupted(MediaLabError):
    title = "Interrupted"


class ServerLost(ComfyUnreachable):
    title = "Server lost the prompt"


class Executor:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    def run(self, job_id: str, server: Server) -> JobState:
        """Run a job this process has claimed; returns its final state. Never raises for job failures."""
        with self.db.session() as s:
            job = service.get_job(s, job_id)
            t = service.template_from_row(s.get(TemplateVersionRow, job.template_version_id))
            number = s.exec(select(func.count()).where(Attempt.job_id == job_id)).one() + 1
            attempt = Attempt(job_id=job_id, number=number, server=server.url, comfy_version=server.comfy_version)
            s.add(attempt)
            s.commit()
            service.add_event(s, job_id, "info", f"attempt {number} on {server.url}",
                              {"attempt": attempt.id, "server": server.url})
        try:
            artifacts = self._execute(job, t, attempt, server)
        except ComfyValidationError as exc:
            return self._finish(attempt, JobState.FAILED, exc.message,
                                {"message": exc.message, "comfy_error": exc.error, "node_errors": exc.node_errors})
        except Interrupted as exc:
            return self._finish(attempt, JobState.CANCELLED, exc.message, None)
        except MediaLabError as exc:
            return self._finish(attempt, JobState.FAILED, exc.message, {"message": exc.message, **exc.extra})
        except Exception as exc:  # a bug or an unexpected server answer: the job must still end
            log.exception("job %s failed", job_id)
            return self._finish(attempt, JobState.FAILED, f"internal error: {exc!r}",
                                {"message": f"internal error: {exc!r}"})
        return self._finish(attempt, JobState.SUCCEEDED, "outputs stored", None, artifacts)

    # -- steps -------------------------------------------------------------------------------------
    def _execute(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server) -> list[Artifact]:
        missing = server.missing(service.required_models(t, job.params))
        if missing:
            raise MissingModels(f"{server.url} lacks " + ", ".join(f"{f}/{n}" for f, n in missing))
        values, input_ids = self._upload_inputs(job, t, server)
        graph = tpl.bind(t, values)
        extra = {"extra_pnginfo": {"medialab": {"job": job.id, "attempt": attempt.id, "template": t.ref,
                                                "template_hash": t.content_hash}}}
        with server.client.events(attempt.id) as events:
            server.client.submit(graph, attempt.id, attempt.id, extra_data=extra)
            self._event(job.id, "info", "submitted", {"prompt_id": attempt.id})
            history = self._follow(events, job, graph, attempt, server)
        return self._collect(job, t, attempt, server, history, input_ids)

    def _upload_inputs(self, job: Job, t: tpl.TemplateVersion, server: Server) -> tuple[dict[str, Any], list[str]]:
        values, input_ids = dict(job.params), []
        with self.db.session() as s:
            for p in t.manifest.parameters:
                if p.type not in tpl.ARTIFACT_TYPES or not values.get(p.name):
                    continue
                art = service.get_artifact(s, values[p.name])
                with self.store.open(art.key) as f:
                    values[p.name] = server.client.upload(f, art.sha256 + Path(art.filename).suffix.lower(),
                                                          subfolder="medialab")
                input_ids.append(art.id)
        return values, input_ids

    def _follow(self, events: EventStream, job: Job, graph: dict[str, Any], attempt: Attempt,
                server: Server) -> dict[str, Any]:
        """Follow the prompt to its end; returns its /history entry."""
        pid, client = attempt.id, server.client
        titles = {k: (v.get("_meta") or {}).get("title") or v["class_type"] for k, v in graph.items()}
        timeout = job.timeout_s or self.settings.job_timeout_s
        deadline = time.monotonic() + timeout if timeout else None
        quiet_since = time.monotonic()
        last_progress = checked_at = 0.0
        done: set[str] = set()
        interrupting = False
        while True:
            event = events.recv(timeout=1.0)
            if not interrupting and time.monotonic() - checked_at > 0.5:
                checked_at = time.monotonic()
                reason = ("cancelled" if self._cancel_requested(job.id) else
                          f"timed out after {timeout:.0f}s" if deadline and time.monotonic() > deadline else None)
                if reason:
                    interrupting = True
                    client.delete_queued(pid)
                    client.interrupt(pid)  # only ever by prompt_id: never someone else's job
                    self._event(job.id, "info", f"interrupting: {reason}")
                    if reason != "cancelled":
                        raise ExecutionFailed(f"job {reason}; interrupted on {server.url}")
            if event is None:
                if time.monotonic() - quiet_since > self.settings.event_timeout_s:
                    # the websocket went quiet: ask the server itself ({} means running *or* unknown)
                    entry = client.history(pid)
                    if not entry and client.queue_position(pid) is None:
                        entry = client.history(pid)  # it may have finished between the two calls
                        if not entry:
                            raise ServerLost(f"{server.url} no longer knows prompt {pid}")
                    if entry:
                        return self._check_history(entry, pid, interrupting)
                    quiet_since = time.monotonic()
                continue
            quiet_since = time.monotonic()
            data = event.get("data") or {}
            if data.get("prompt_id") != pid:
                continue
            kind = event.get("type")
            if kind == "execution_cached":
                done.update(data.get("nodes") or [])
            elif kind == "executing" and data.get("node") is None:
                return self._check_history(client.history(pid) or {}, pid, interrupting)
            elif kind == "executing":
                done.add(data["node"])
            elif kind == "progress" and (data["value"] >= data["max"] or time.monotonic() - last_progress > 0.2):
                last_progress = time.monotonic()
                fraction = (len(done) - 1 + data["value"] / max(data["max"], 1)) / len(graph)
                node = str(data.get("node"))
                self._event(job.id, "progress", f"{titles.get(node, node)} {data['value']}/{data['max']}",
                            {"node": node, "title": titles.get(node), "value": data["value"],
                             "max": data["max"], "fraction": round(max(fraction, 0.0), 4)},
                            progress=round(max(fraction, 0.0), 4))
            elif kind == "execution_error":
                node = str(data.get("node_id"))
                raise ExecutionFailed(
                    f"node '{titles.get(node, node)}' (#{node} {data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}",
                    node_id=node, node_type=data.get("node_type"), exception_type=data.get("exception_type"),
                    exception_message=data.get("exception_message"))
            elif kind == "execution_interrupted":
                raise Interrupted("cancelled; ComfyUI confirmed the interruption")

    @staticmethod
    def _check_history(entry: dict[str, Any], pid: str, interrupting: bool) -> dict[str, Any]:
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

    def _collect(self, job: Job, t: tpl.TemplateVersion, attempt: Attempt, server: Server,
                 history: dict[str, Any], input_ids: list[str]) -> list[Artifact]:
        artifacts = []
        outputs = history.get("outputs") or {}
        for node_id, name in tpl.output_node_ids(t).items():
            for ref in output_files(outputs.get(node_id) or {}):
                obj = self.store.put_stream(server.client.stream_view(ref))
                with self.store.open(obj.key) as f:
                    content_type, w, h = service.sniff(f, ref.filename)
                artifacts.append(Artifact(
                    origin=f"output:{job.id}:{node_id}:{ref.subfolder}/{ref.filename}", key=obj.key,
                    sha256=obj.sha256, size=obj.size, content_type=content_type, filename=ref.filename,
                    role="output", job_id=job.id, attempt_id=attempt.id, output_name=name, template=t.name,
                    template_version=t.version, template_hash=t.content_hash, params=job.params,
                    input_artifacts=input_ids, server=server.url, comfy_version=attempt.comfy_version,
                    width=w, height=h))
        if not artifacts:
            raise ExecutionFailed(f"{t.ref} finished without files on its output nodes "
                                  f"({', '.join(o.node for o in t.manifest.outputs)})")
        return artifacts

    # -- bookkeeping ------------------------------------------------------------------------------
    def _cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as s:
            return bool(s.exec(select(Job.cancel_requested).where(Job.id == job_id)).one())

    def _event(self, job_id: str, kind: str, reason: str, data: dict[str, Any] | None = None, **fields: Any) -> None:
        with self.db.session() as s:
            service.add_event(s, job_id, kind, reason, data, **fields)

    def _finish(self, attempt: Attempt, state: JobState, reason: str, error: dict[str, Any] | None,
                artifacts: list[Artifact] | None = None) -> JobState:
        with self.db.session() as s:
            row = s.get(Attempt, attempt.id)
            row.state, row.error, row.finished_at = state, error, now()
            s.add(row)
            known = {a.origin for a in s.exec(select(Artifact).where(Artifact.job_id == attempt.job_id))}
            for art in artifacts or []:
                if art.origin not in known:  # a re-run after a crash never stores an output twice
                    s.add(art)
            data = {"outputs": [a.id for a in artifacts]} if artifacts else error
            fields: dict[str, Any] = {"error": error}
            if state == JobState.SUCCEEDED:
                fields["progress"] = 1.0
            if not service.transition(s, attempt.job_id, JobState.RUNNING, state, reason, data, **fields):
                log.warning("job %s was no longer RUNNING when attempt %s ended %s", attempt.job_id,
                            attempt.id, state)
                return service.get_job(s, attempt.job_id).state
        return state
