"""A stand-in for a RunPod serverless endpoint running worker-comfyui 5.x, in front of a REAL ComfyUI.

No real RunPod endpoint can exist here (no network, no account): this follows RunPod's documented request and
status shapes (``/run``, ``/status/{id}``, ``/cancel/{id}``, ``/health``, bearer token) and worker-comfyui's
input and output shapes (``input.workflow``, ``input.images[{name, image}]``; ``output.images[{filename,
type: "base64", data}]``), and runs each job on the ComfyUI it is given, one at a time (one worker): the images
are uploaded with ``POST /upload/image``, the graph queued with ``POST /prompt``, ``/history`` polled, and the
outputs returned base64 with ``delayTime`` (queued, ms) and ``executionTime`` (ms). A cancel removes a queued
prompt or interrupts the running one and reports CANCELLED at once, as RunPod does.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from orchestrator.comfy.worker import free_port


class RunPodStandIn:
    def __init__(self, comfy_url: str, token: str, poll_s: float = 0.1, job_timeout_s: float = 120.0) -> None:
        self.comfy_url = comfy_url.rstrip("/")
        self.token = token
        self.poll_s = poll_s
        self.job_timeout_s = job_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2/standin"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) seen, for tests
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._running: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> RunPodStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                stand_in._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                stand_in._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True),
                         threading.Thread(target=self._work, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> RunPodStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        prefix = "/v2/standin"
        path = h.path.split("?", 1)[0]
        self.requests.append((method, path, dict(h.headers.items())))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return _answer(h, 401, {"error": "Unauthorized"})
        if not path.startswith(prefix + "/"):
            return _answer(h, 404, {"error": "endpoint not found"})
        parts = path[len(prefix) + 1:].split("/")
        if method == "POST" and parts == ["run"]:
            try:
                body = json.loads(raw or b"{}")
                workflow = body["input"]["workflow"]
                images = body["input"].get("images") or []
                assert isinstance(workflow, dict) and isinstance(images, list)
            except (ValueError, KeyError, TypeError, AssertionError):
                return _answer(h, 400, {"error": "input.workflow is required"})
            job_id = f"sync-{uuid.uuid4()}"
            with self._lock:
                self.jobs[job_id] = {"id": job_id, "status": "IN_QUEUE", "created": time.monotonic(),
                                     "workflow": workflow, "images": images}
            self._queue.put(job_id)
            return _answer(h, 200, {"id": job_id, "status": "IN_QUEUE"})
        if method == "GET" and len(parts) == 2 and parts[0] == "status":
            with self._lock:
                job = self.jobs.get(parts[1])
                shown = _shown(job) if job else None
            return _answer(h, 200, shown) if shown else _answer(h, 404, {"error": "job not found"})
        if method == "POST" and len(parts) == 2 and parts[0] == "cancel":
            return self._cancel(h, parts[1])
        if method == "GET" and parts == ["health"]:
            with self._lock:
                counts: dict[str, int] = {}
                for job in self.jobs.values():
                    counts[job["status"]] = counts.get(job["status"], 0) + 1
                running = 1 if self._running else 0
            jobs = {"completed": counts.get("COMPLETED", 0), "failed": counts.get("FAILED", 0),
                    "inProgress": counts.get("IN_PROGRESS", 0), "inQueue": counts.get("IN_QUEUE", 0),
                    "retried": 0}
            return _answer(h, 200, {"jobs": jobs, "workers": {"idle": 1 - running, "running": running,
                                                              "initializing": 0, "ready": 1, "throttled": 0}})
        return _answer(h, 404, {"error": "route not found"})

    def _cancel(self, h: BaseHTTPRequestHandler, job_id: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return _answer(h, 404, {"error": "job not found"})
            was = job["status"]
            if was in ("IN_QUEUE", "IN_PROGRESS"):
                job["status"] = "CANCELLED"
        if was == "IN_PROGRESS":
            with httpx.Client(base_url=self.comfy_url, timeout=10) as c:
                c.post("/queue", json={"delete": [job_id]})
                c.post("/interrupt", json={"prompt_id": job_id})
        return _answer(h, 200, {"id": job_id, "status": self.jobs[job_id]["status"]})

    # -- the worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self.jobs[job_id]
                if job["status"] != "IN_QUEUE":
                    continue
                job["status"] = "IN_PROGRESS"
                job["delayTime"] = int((time.monotonic() - job["created"]) * 1000)
                self._running = job_id
            started = time.monotonic()
            try:
                result = self._run(job_id, job)
            except Exception as exc:  # the worker reports any failure as the job's error, as worker-comfyui does
                result = {"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}
            with self._lock:
                self._running = None
                job["executionTime"] = int((time.monotonic() - started) * 1000)
                if job["status"] == "IN_PROGRESS":
                    job.update(result)

    def _run(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=self.comfy_url, timeout=30) as c:
            for img in job["images"]:
                data = str(img["image"])
                data = data.partition(",")[2] if data.startswith("data:") else data
                r = c.post("/upload/image", files={"image": (img["name"], base64.b64decode(data), "image/png")},
                           data={"type": "input", "overwrite": "true"})
                r.raise_for_status()
            r = c.post("/prompt", json={"prompt": job["workflow"], "prompt_id": job_id, "client_id": "runpod"})
            if r.status_code != 200:
                return {"status": "FAILED", "error": f"Workflow validation failed: {r.text[:1000]}"}
            deadline = time.monotonic() + self.job_timeout_s
            while True:
                entry = (c.get(f"/history/{job_id}").json() or {}).get(job_id)
                if entry:
                    break
                with self._lock:
                    if job["status"] != "IN_PROGRESS":
                        return {}
                if time.monotonic() > deadline:
                    c.post("/interrupt", json={"prompt_id": job_id})
                    return {"status": "TIMED_OUT"}
                time.sleep(self.poll_s)
            status = entry.get("status") or {}
            if status.get("status_str") != "success":
                errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                msg = errors[0].get("exception_message", "execution error") if errors else "execution failed"
                return {"status": "FAILED", "error": f"Workflow execution error: {msg}"}
            images = []
            for ui in (entry.get("outputs") or {}).values():
                for ref in ui.get("images", []):
                    if ref.get("type") != "output":
                        continue
                    r = c.get("/view", params={"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                               "type": "output"})
                    r.raise_for_status()
                    images.append({"filename": ref["filename"], "type": "base64",
                                   "data": base64.b64encode(r.content).decode("ascii")})
            return {"status": "COMPLETED", "output": {"images": images}}


def _shown(job: dict[str, Any]) -> dict[str, Any]:
    """The /status answer: RunPod's fields only."""
    return {k: job[k] for k in ("id", "status", "delayTime", "executionTime", "output", "error") if k in job}


def _answer(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
