"""An in-process fake ComfyUI 0.3.75 for unit tests: no sockets, no event loop, scriptable per prompt.

``FakeComfy`` answers what ``ComfyClient`` asks (``/prompt``, ``/history[/{id}]``, ``GET|POST /queue``,
``/interrupt``, ``/upload/image``, ``/view``, ``/object_info[/{class}]``, ``/models[/{folder}]``,
``/system_stats``, ``/medialab/info``) through an ``httpx.MockTransport``, and delivers websocket events
through ``connect`` (the ``websocket.create_connection`` seam of ``ServerMonitor``). The JSON shapes are
ComfyUI's (see ../shared/comfy/REFERENCE.md and benchmarks/sim/server.py): one worker thread runs one prompt
at a time, events go only to the socket of the prompt's client id, ``/history/{id}`` is ``{}`` while running
and for unknown prompts, ``/interrupt`` acts only on the running prompt it names.

Each submitted prompt takes the next ``Script`` of its queue (``scripts``, which several fakes may share: the
n-th prompt submitted anywhere takes the n-th script); a prompt without one succeeds with one image.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import itertools
import json
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import websocket
from PIL import Image

from orchestrator.comfy.client import ComfyClient
from orchestrator.comfy.monitor import ServerMonitor

OBJECT_INFO: dict[str, Any] = json.loads((Path(__file__).with_name("object_info_core.json")).read_text())
"""The core nodes of the upscale templates, as a real 0.3.75 server's /object_info lists them."""
OUTPUT_NODES = {"SaveImage"}
STEP_S = 0.002  # real seconds between two events of a prompt
_CLOSED = object()


@dataclass
class Script:
    """What one prompt does.

    ``outcome``: ``success`` (``images`` files on each output node), ``error`` (an execution_error on
    ``error_node``, by default the last node before the first output node) or ``hang`` (runs until it is
    interrupted: a prompt that never ends). ``events=False``: the socket says nothing of this prompt (only
    /history and /queue tell). ``run_s``: how long it runs (the output node waits for it). ``lose_socket_at``:
    from the n-th event of the prompt on its events are lost (it runs on to its end); the socket is closed
    once the prompt has ended (a dead connection noticed late). ``die_at``: the server dies right after the
    n-th event (every request raises ConnectError and every socket closes from then on).
    """

    outcome: str = "success"
    images: int = 1
    error_node: str | None = None
    exception_type: str = "RuntimeError"
    exception_message: str = "boom"
    events: bool = True
    run_s: float = 0.0
    lose_socket_at: int | None = None
    die_at: int | None = None


@dataclass
class Prompt:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    client_id: str | None
    script: Script
    generation: int
    interrupted: bool = False
    sent: int = 0  # events of this prompt so far (delivered or lost)
    muted: bool = False

    @property
    def item(self) -> list[Any]:
        """The prompt as /queue and /history list it: [number, prompt_id, prompt, extra_data, outputs]."""
        outputs = [k for k, v in self.graph.items() if v.get("class_type") in OUTPUT_NODES]
        return [self.number, self.prompt_id, self.graph, self.extra, outputs]


class FakeSocket:
    """One websocket as ``websocket.WebSocket`` behaves for the monitor."""

    def __init__(self, server: FakeComfy, client_id: str) -> None:
        self.server = server
        self.client_id = client_id
        self.frames: queue.Queue[Any] = queue.Queue()
        self.timeout: float | None = None
        self.closed = False

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv(self) -> str:
        try:
            frame = self.frames.get(timeout=self.timeout)
        except queue.Empty:
            raise websocket.WebSocketTimeoutException("timed out") from None
        if frame is _CLOSED:
            self.frames.put(_CLOSED)  # every later recv fails too
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        return frame

    def send_event(self, kind: str, data: dict[str, Any]) -> None:
        if not self.closed:
            self.frames.put(json.dumps({"type": kind, "data": data}))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.frames.put(_CLOSED)
        self.server.forget_socket(self)

    abort = close


@dataclass
class FakeComfy:
    """One fake ComfyUI server; ``transport`` and ``connect`` are what a ComfyClient / ServerMonitor take."""

    url: str = "http://comfy-a.test:8188"
    scripts: deque[Script] = field(default_factory=deque)
    models: dict[str, list[str]] = field(default_factory=lambda: {"upscale_models": ["x4.pth"]})
    version: str = "0.3.75"
    check_inputs: bool = False  # refuse a prompt whose LoadImage names a file never uploaded, as ComfyUI does
    # what happened, for assertions
    submitted: list[str] = field(default_factory=list)
    interrupts: list[str | None] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    uploads: dict[tuple[str, str], bytes] = field(default_factory=dict)
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (type, subfolder, name) -> bytes

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.alive = True
        self.generation = 0  # a restart starts a new one: what the worker ran before is forgotten
        self.pending: deque[Prompt] = deque()
        self.running: Prompt | None = None
        self.history: dict[str, Any] = {}
        self.sockets: dict[str, FakeSocket] = {}
        self._numbers = itertools.count()
        self._files = itertools.count(1)
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._stop = False
        self.transport = httpx.MockTransport(self.handle)
        self._worker = threading.Thread(target=self._work, name=f"fake {self.url}", daemon=True)
        self._worker.start()

    # -- control -----------------------------------------------------------------------------------
    def script(self, *scripts: Script) -> FakeComfy:
        self.scripts.extend(scripts)
        return self

    def die(self) -> None:
        """The process is gone: requests raise ConnectError, sockets close, connects are refused."""
        with self._lock:
            self.alive = False
            self._close_sockets()

    def restart(self) -> None:
        """Up again with nothing of before: no queue, no history, no sockets (clients reconnect)."""
        with self._lock:
            self.alive = True
            self.generation += 1
            self.pending.clear()
            self.running = None
            self.history.clear()
            self._close_sockets()
            self._wakeup.notify_all()

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._close_sockets()
            self._wakeup.notify_all()
        self._worker.join(2)

    def wait_finished(self, prompt_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The history entry of the prompt, once it is written (for tests that let a prompt run unwatched)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if prompt_id in self.history:
                    return self.history[prompt_id]
            time.sleep(0.002)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout}s")

    def wait_running(self, prompt_id: str, timeout: float = 5.0) -> None:
        """Return once the prompt is the one running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.running is not None and self.running.prompt_id == prompt_id:
                    return
            time.sleep(0.002)
        raise AssertionError(f"prompt {prompt_id} did not start within {timeout}s")

    def asked(self, method: str, path: str) -> int:
        """How many requests of this method and path the server answered."""
        return sum(1 for r in self.requests if r == (method, path))

    # -- websocket ---------------------------------------------------------------------------------
    def connect(self, url: str, timeout: float | None = None, **_: Any) -> FakeSocket:
        """``websocket.create_connection`` for this server (``ws://host/ws?clientId=ID``)."""
        with self._lock:
            if not self.alive:
                raise ConnectionRefusedError(111, "Connection refused")
            cid = (parse_qs(urlsplit(url).query).get("clientId") or ["anonymous"])[0]
            old = self.sockets.get(cid)
            if old is not None:  # ComfyUI keeps one socket per client id: the newer one takes its events
                old.close()
            sock = self.sockets[cid] = FakeSocket(self, cid)
            sock.settimeout(timeout)
            sock.send_event("status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}, "sid": cid})
            return sock

    def forget_socket(self, sock: FakeSocket) -> None:
        with self._lock:
            if self.sockets.get(sock.client_id) is sock:
                del self.sockets[sock.client_id]

    def _close_sockets(self) -> None:
        for sock in list(self.sockets.values()):
            sock.close()

    def _remaining(self) -> int:
        return len(self.pending) + (self.running is not None)

    def _broadcast_status(self) -> None:
        for sock in list(self.sockets.values()):
            sock.send_event("status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}})

    # -- execution ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self.pending:
                    self._wakeup.wait()
                if self._stop:
                    return
                p = self.running = self.pending.popleft()
            try:
                self._execute(p)
            finally:
                with self._lock:
                    if self.running is p:
                        self.running = None

    def _current(self, p: Prompt) -> bool:
        """The prompt still runs on a live server of its generation (else the worker drops it silently)."""
        return self.alive and not self._stop and p.generation == self.generation

    def _emit(self, p: Prompt, kind: str, data: dict[str, Any], messages: list[list[Any]] | None = None) -> None:
        with self._lock:
            if not self._current(p):
                raise _Gone
            data = {**data, "prompt_id": p.prompt_id}
            if messages is not None:
                messages.append([kind, {**data, "timestamp": int(time.time() * 1000)}])
            p.sent += 1
            s = p.script
            if s.lose_socket_at is not None and p.sent >= s.lose_socket_at:
                p.muted = True
            sock = self.sockets.get(p.client_id or "")
            if sock is not None and s.events and not p.muted:
                sock.send_event(kind, data)
            if s.die_at is not None and p.sent >= s.die_at:
                self.die()
                raise _Gone
        time.sleep(STEP_S)

    def _wait(self, p: Prompt, seconds: float | None) -> None:
        """Run for ``seconds`` (None: until interrupted); raises _Interrupted or _Gone."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            with self._lock:
                if not self._current(p):
                    raise _Gone
                if p.interrupted:
                    raise _Interrupted
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(STEP_S)

    def _execute(self, p: Prompt) -> None:
        s, messages, outputs = p.script, [], {}
        node_ids = list(p.graph)
        first_output = next((n for n in node_ids if p.graph[n].get("class_type") in OUTPUT_NODES), node_ids[-1])
        failing = s.error_node or (node_ids[node_ids.index(first_output) - 1] if first_output != node_ids[0]
                                   else first_output)
        status, executed = "success", []
        try:
            with self._lock:
                self._broadcast_status()
            self._emit(p, "execution_start", {}, messages)
            self._emit(p, "execution_cached", {"nodes": []}, messages)
            for node_id in node_ids:
                self._wait(p, 0)
                node = p.graph[node_id]
                self._emit(p, "executing", {"node": node_id, "display_node": node_id})
                if s.outcome == "error" and node_id == failing:
                    status = "error"
                    self._emit(p, "execution_error", {
                        "node_id": node_id, "node_type": node.get("class_type"), "executed": executed,
                        "exception_message": s.exception_message, "exception_type": s.exception_type,
                        "traceback": ["Traceback (most recent call last):\n", f"{s.exception_type}: "
                                      f"{s.exception_message}\n"], "current_inputs": {}, "current_outputs": {}},
                        messages)
                    break
                if node_id == first_output:
                    self._wait(p, None if s.outcome == "hang" else s.run_s)
                    self._emit(p, "progress", {"value": 1, "max": 1, "node": node_id})
                if node.get("class_type") in OUTPUT_NODES:
                    outputs[node_id] = ui = {"images": self._save(node, s.images)}
                    self._emit(p, "executed", {"node": node_id, "display_node": node_id, "output": ui})
                executed.append(node_id)
            if status == "success":
                self._emit(p, "execution_success", {}, messages)
        except _Interrupted:
            status = "error"
            with self._lock:
                data = {"prompt_id": p.prompt_id, "node_id": None, "node_type": None, "executed": executed}
                messages.append(["execution_interrupted", {**data, "timestamp": int(time.time() * 1000)}])
                self._deliver(p, "execution_interrupted", data)
        except _Gone:
            return
        with self._lock:
            if not self._current(p):
                return
            self.history[p.prompt_id] = {
                "prompt": p.item, "outputs": outputs if status == "success" else {},
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                         for n in outputs}}
            self._deliver(p, "executing", {"node": None, "prompt_id": p.prompt_id})  # after history, as ComfyUI
            if p.muted:  # the lost socket's drop is noticed now
                sock = self.sockets.get(p.client_id or "")
                if sock is not None:
                    sock.close()
            self._broadcast_status()

    def _deliver(self, p: Prompt, kind: str, data: dict[str, Any]) -> None:
        sock = self.sockets.get(p.client_id or "")
        if sock is not None and p.script.events and not p.muted:
            sock.send_event(kind, data)

    def _save(self, node: dict[str, Any], count: int) -> list[dict[str, str]]:
        """SaveImage: ``images`` distinct PNGs under the prefix's subfolder, as ComfyUI names them."""
        prefix = str((node.get("inputs") or {}).get("filename_prefix", "ComfyUI"))
        subfolder, _, stem = prefix.rpartition("/")
        refs = []
        for _ in range(count):
            n = next(self._files)
            name = f"{stem}_{n:05d}_.png"
            buf = io.BytesIO()
            Image.new("RGB", (16, 12), (n * 37 % 256, 90, 160)).save(buf, format="PNG")
            self.files[("output", subfolder, name)] = buf.getvalue()
            refs.append({"filename": name, "subfolder": subfolder, "type": "output"})
        return refs

    # -- HTTP --------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api")
        with self._lock:
            if not self.alive:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            self.requests.append((request.method, path))
        for method, pattern, handler in self._routes:
            m = re.fullmatch(pattern, path)
            if m and method == request.method:
                return handler(self, request, *m.groups())
        return httpx.Response(404, text="404: Not Found")

    def _post_prompt(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        graph = body.get("prompt") or {}
        unknown = [v.get("class_type") for v in graph.values() if v.get("class_type") not in OBJECT_INFO]
        if unknown:
            err = {"type": "invalid_prompt", "message": f"Cannot execute because node {unknown[0]} does not exist.",
                   "details": f"Node ID '#{next(iter(graph))}'", "extra_info": {}}
            return httpx.Response(400, json={"error": err, "node_errors": {}})
        missing = self._missing_inputs(graph) if self.check_inputs else {}
        if missing:
            return httpx.Response(400, json={"error": {"type": "prompt_outputs_failed_validation", "message":
                                                       "Prompt outputs failed validation", "details": "",
                                                       "extra_info": {}}, "node_errors": missing})
        with self._lock:
            script = self.scripts.popleft() if self.scripts else Script()
            p = Prompt(next(self._numbers), body.get("prompt_id") or f"fake-{len(self.submitted)}", graph,
                       body.get("extra_data") or {}, body.get("client_id"), script, self.generation)
            self.submitted.append(p.prompt_id)
            self.pending.append(p)
            self._wakeup.notify_all()
        return httpx.Response(200, json={"prompt_id": p.prompt_id, "number": p.number, "node_errors": {}})

    def _missing_inputs(self, graph: dict[str, Any]) -> dict[str, Any]:
        """ComfyUI's node_errors for LoadImage nodes whose file is not in the input folder."""
        out: dict[str, Any] = {}
        with self._lock:
            for node_id, node in graph.items():
                image = (node.get("inputs") or {}).get("image")
                if node.get("class_type") == "LoadImage" and isinstance(image, str):
                    sub, _, name = image.rpartition("/")
                    if (sub, name) not in self.uploads:
                        out[node_id] = {"errors": [{"type": "custom_validation_failed",
                                                    "message": "Custom validation failed for node",
                                                    "details": f"image - Invalid image file: {image}"}],
                                        "dependent_outputs": [], "class_type": "LoadImage"}
        return out

    def clear_inputs(self) -> None:
        """The server's input folder emptied (a fresh container behind the same URL)."""
        with self._lock:
            self.uploads.clear()

    def _get_history(self, request: httpx.Request, prompt_id: str | None = None) -> httpx.Response:
        with self._lock:
            if prompt_id is None:
                return httpx.Response(200, json=self.history)
            return httpx.Response(200, json={prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    def _get_queue(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            return httpx.Response(200, json={"queue_running": [self.running.item] if self.running else [],
                                             "queue_pending": [p.item for p in self.pending]})

    def _post_queue(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        with self._lock:
            if body.get("clear"):
                self.pending.clear()
            drop = set(body.get("delete") or [])
            self.deleted += [p.prompt_id for p in self.pending if p.prompt_id in drop]
            self.pending = deque(p for p in self.pending if p.prompt_id not in drop)  # pending ones only
        return httpx.Response(200)

    def _interrupt(self, request: httpx.Request) -> httpx.Response:
        pid = json.loads(request.content or b"{}").get("prompt_id")
        with self._lock:
            self.interrupts.append(pid)
            if self.running and (pid is None or pid == self.running.prompt_id):
                self.running.interrupted = True
        return httpx.Response(200)

    def _upload(self, request: httpx.Request) -> httpx.Response:
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
        fields: dict[str, Any] = {}
        for part in msg.iter_parts():
            fields[part.get_param("name", header="content-disposition")] = (
                part.get_filename(), part.get_payload(decode=True))
        filename, data = fields["image"]
        subfolder = fields.get("subfolder", (None, b""))[1].decode()
        name = filename
        with self._lock:
            stem, dot, ext = filename.rpartition(".")
            n = 0
            while (subfolder, name) in self.uploads and self.uploads[(subfolder, name)] != data:
                n += 1  # a different file of the same name is renamed, as ComfyUI does
                name = f"{stem} ({n}){dot}{ext}"
            self.uploads[(subfolder, name)] = data
        return httpx.Response(200, json={"name": name, "subfolder": subfolder, "type": "input"})

    def _view(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        key = (q.get("type", "output"), q.get("subfolder", ""), q.get("filename", ""))
        if ".." in key[1] or ".." in key[2]:
            return httpx.Response(400)
        with self._lock:
            data = self.files.get(key)
        if data is None:
            return httpx.Response(404)
        return httpx.Response(200, content=data, headers={"Content-Type": "image/png"})

    def _object_info(self, request: httpx.Request, node_class: str | None = None) -> httpx.Response:
        info = json.loads(json.dumps(OBJECT_INFO))
        info["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] = self.models.get(
            "upscale_models", [])
        if node_class is None:
            return httpx.Response(200, json=info)
        return httpx.Response(200, json={node_class: info[node_class]} if node_class in info else {})

    def _models(self, request: httpx.Request, folder: str | None = None) -> httpx.Response:
        if folder is None:
            return httpx.Response(200, json=sorted(self.models))
        if folder not in self.models:
            return httpx.Response(404, text="404: Not Found")
        return httpx.Response(200, json=self.models[folder])

    def _system_stats(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "system": {"os": "posix", "ram_total": 16 << 30, "ram_free": 8 << 30, "comfyui_version": self.version,
                       "required_frontend_version": "1.28.8", "installed_templates_version": "0.2.11",
                       "required_templates_version": "0.2.11", "python_version": "3.11", "pytorch_version": "fake",
                       "embedded_python": False, "argv": ["main.py", "--cpu"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 16 << 30, "vram_free": 8 << 30,
                         "torch_vram_total": 16 << 30, "torch_vram_free": 8 << 30}]})

    _routes: ClassVar[list[tuple[str, str, Callable[..., httpx.Response]]]] = [
        ("POST", r"/prompt", _post_prompt), ("GET", r"/history", _get_history),
        ("GET", r"/history/([^/]+)", _get_history), ("GET", r"/queue", _get_queue), ("POST", r"/queue", _post_queue),
        ("POST", r"/interrupt", _interrupt), ("POST", r"/upload/image", _upload), ("GET", r"/view", _view),
        ("GET", r"/object_info", _object_info), ("GET", r"/object_info/([^/]+)", _object_info),
        ("GET", r"/models", _models), ("GET", r"/models/([^/]+)", _models), ("GET", r"/system_stats", _system_stats),
    ]  # /medialab/info: 404, the project's node pack is not installed


class _Interrupted(Exception):
    pass


class _Gone(Exception):
    """The server died or restarted under the prompt."""


def pool_connect(*fakes: FakeComfy) -> Callable[[str, str], tuple[ComfyClient, ServerMonitor]]:
    """A ``Pool(connect=...)`` that puts each fake behind the real ComfyClient and ServerMonitor."""
    by_url = {f.url: f for f in fakes}

    def connect(url: str, client_id: str) -> tuple[ComfyClient, ServerMonitor]:
        fake = by_url[url.rstrip("/")]
        return (ComfyClient(url, timeout=5, transport=fake.transport),
                ServerMonitor(url, client_id, connect=fake.connect, max_backoff_s=0.5))

    return connect
