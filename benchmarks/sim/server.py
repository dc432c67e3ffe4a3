"""Simulated ComfyUI servers: many in one asyncio loop, each on its own port, speaking ComfyUI's protocol.

Usage: python -m benchmarks.sim.server --servers 100 --config sim.json   (prints one JSON line of URLs)

Each server answers what the orchestrator uses of ComfyUI 0.3.75: ``POST /prompt``, ``GET /history[/{id}]``,
``GET|POST /queue``, ``POST /interrupt``, ``GET /object_info[/{class}]``, ``GET /models[/{folder}]``,
``GET /system_stats``, ``POST /upload/image``, ``GET /view`` and the websocket ``/ws?clientId=`` with
status / execution_start / execution_cached / executing / progress / executed / execution_success /
execution_interrupted messages, routed to the prompt's client id. It runs one prompt at a time: the
checkpoint named in the graph costs its load time unless it is the one model held warm, then the
sampler runs ``steps x STEP_S`` simulated seconds. Time is scaled (``time_scale``: real seconds per
simulated second). ``GET /sim/stats`` reports busy time (real seconds, loads included), loads and jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from benchmarks.sim.workload import FOLDER, STEP_S

NODE_CLASSES = {  # the core nodes the simulated template uses, as /object_info lists them (inputs trimmed)
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CLIPTextEncode": ["CONDITIONING"],
    "EmptyLatentImage": ["LATENT"], "KSampler": ["LATENT"], "VAEDecode": ["IMAGE"], "SaveImage": [],
    "LoadImage": ["IMAGE", "MASK"],
}
OUTPUT_NODES = {"SaveImage"}


def object_info() -> dict[str, Any]:
    return {name: {"input": {"required": {}}, "input_order": {"required": []}, "output": out,
                   "output_is_list": [False] * len(out), "output_name": out, "name": name, "display_name": name,
                   "description": "", "python_module": "nodes", "category": "sim",
                   "output_node": name in OUTPUT_NODES} for name, out in NODE_CLASSES.items()}


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (30, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Prompt:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    client_id: str | None
    interrupted: bool = False

    @property
    def item(self) -> list[Any]:
        outputs = [k for k, v in self.graph.items() if v.get("class_type") in OUTPUT_NODES]
        return [self.number, self.prompt_id, self.graph, self.extra, outputs]


@dataclass
class SimServer:
    index: int
    load_s: dict[str, float]  # model file -> load cost (simulated s)
    time_scale: float  # real seconds per simulated second
    warm: str | None = None
    progress_events: int = 5
    queue: deque[Prompt] = field(default_factory=deque)
    running: Prompt | None = None
    history: dict[str, Any] = field(default_factory=dict)
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    busy_s: float = 0.0
    loads: int = 0
    jobs: int = 0
    first_start: float | None = None
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each prompt, wall clock
    last_end: float | None = None
    counter: int = 0
    image: bytes = field(default_factory=png)

    def __post_init__(self) -> None:
        self.wakeup = asyncio.Event()

    # -- websocket ----------------------------------------------------------------------------------
    async def send(self, kind: str, data: dict[str, Any], client_id: str | None) -> None:
        ws = self.sockets.get(client_id) if client_id else None
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"type": kind, "data": data}))

    async def broadcast_status(self) -> None:
        data = {"status": {"exec_info": {"queue_remaining": len(self.queue) + (self.running is not None)}}}
        for cid in list(self.sockets):
            await self.send("status", data, cid)

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        cid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[cid] = ws
        await ws.send_str(json.dumps({"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": len(self.queue)}}, "sid": cid}}))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            if self.sockets.get(cid) is ws:
                del self.sockets[cid]
        return ws

    # -- execution ----------------------------------------------------------------------------------
    async def worker(self) -> None:
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            p = self.running = self.queue.popleft()
            await self.execute(p)
            self.running = None

    async def execute(self, p: Prompt) -> None:
        cid, pid = p.client_id, p.prompt_id
        start = time.time()
        self.first_start = self.first_start or start
        messages: list[list[Any]] = []

        async def event(kind: str, data: dict[str, Any], record: bool = False) -> None:
            data = {**data, "prompt_id": pid}
            if record:
                messages.append([kind, {**data, "timestamp": int(time.time() * 1000)}])
            await self.send(kind, data, cid)

        await self.broadcast_status()
        await event("execution_start", {}, record=True)
        await event("execution_cached", {"nodes": []}, record=True)
        outputs: dict[str, Any] = {}
        status = "success"
        try:
            for node_id, node in p.graph.items():
                if p.interrupted:
                    raise InterruptedError
                await event("executing", {"node": node_id, "display_node": node_id})
                kind, inputs = node.get("class_type"), node.get("inputs", {})
                if kind == "CheckpointLoaderSimple" and inputs.get("ckpt_name") != self.warm:
                    await self.sleep(self.load_s.get(inputs.get("ckpt_name"), 5.0), p)
                    self.warm, self.loads = inputs.get("ckpt_name"), self.loads + 1
                elif kind == "KSampler":
                    steps = int(inputs.get("steps", 20))
                    marks = sorted({max(1, round(steps * (k + 1) / self.progress_events))
                                    for k in range(self.progress_events)})
                    done = 0
                    for value in marks:
                        await self.sleep((value - done) * STEP_S, p)
                        done = value
                        await event("progress", {"value": value, "max": steps, "node": node_id})
                elif kind in OUTPUT_NODES:
                    self.counter += 1
                    ui = {"images": [{"filename": f"sim_{self.counter:05d}_.png", "subfolder": "", "type": "output"}]}
                    outputs[node_id] = ui
                    await event("executed", {"node": node_id, "display_node": node_id, "output": ui})
        except InterruptedError:
            status = "error"
            await event("execution_interrupted", {"node_id": None, "node_type": None, "executed": []}, record=True)
        end = time.time()
        self.busy_s += end - start
        self.jobs += 1
        self.last_end = end
        self.intervals.append((start, end))
        if status == "success":
            messages.append(["execution_success", {"prompt_id": pid, "timestamp": int(end * 1000)}])
        self.history[pid] = {"prompt": p.item, "outputs": outputs,
                             "status": {"status_str": status, "completed": status == "success",
                                        "messages": messages}, "meta": {}}
        if status == "success":
            await event("executing", {"node": None})
            await event("execution_success", {})
        await self.broadcast_status()

    async def sleep(self, sim_s: float, p: Prompt) -> None:
        deadline = time.monotonic() + sim_s * self.time_scale
        while (left := deadline - time.monotonic()) > 0:
            if p.interrupted:
                raise InterruptedError
            await asyncio.sleep(min(left, 0.5))

    # -- HTTP ---------------------------------------------------------------------------------------
    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        graph = body.get("prompt") or {}
        unknown = {k: v.get("class_type") for k, v in graph.items() if v.get("class_type") not in NODE_CLASSES}
        if unknown:
            err = {"type": "invalid_prompt", "message": f"Cannot execute because node {next(iter(unknown.values()))} "
                   "does not exist.", "details": "", "extra_info": {}}
            return web.json_response({"error": err, "node_errors": {}}, status=400)
        self.counter += 1
        p = Prompt(self.counter, body.get("prompt_id") or str(uuid.uuid4()), graph, body.get("extra_data") or {},
                   body.get("client_id"))
        self.queue.append(p)
        self.wakeup.set()
        await self.broadcast_status()
        return web.json_response({"prompt_id": p.prompt_id, "number": p.number, "node_errors": {}})

    async def get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info.get("prompt_id")
        if pid is None:
            return web.json_response(self.history)
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [self.running.item] if self.running else [],
                                  "queue_pending": [p.item for p in self.queue]})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.clear()
        drop = set(body.get("delete") or [])
        self.queue = deque(p for p in self.queue if p.prompt_id not in drop)
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        pid = body.get("prompt_id")
        if self.running and (pid is None or pid == self.running.prompt_id):
            self.running.interrupted = True
        return web.Response()

    async def get_object_info(self, request: web.Request) -> web.Response:
        info = object_info()
        cls = request.match_info.get("node_class")
        return web.json_response(info if cls is None else ({cls: info[cls]} if cls in info else {}))

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info.get("folder")
        if folder is None:
            return web.json_response([FOLDER])
        if folder != FOLDER:
            return web.json_response({"error": "folder not found"}, status=404)
        return web.json_response(sorted(self.load_s))

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "system": {"os": "posix", "python_version": sys.version, "comfyui_version": "0.3.75",
                       "embedded_python": False, "pytorch_version": "sim", "argv": ["main.py"]},
            "devices": [{"name": f"cuda:0 Simulated GPU {self.index}", "type": "cuda", "index": 0,
                         "vram_total": 24 << 30, "vram_free": 20 << 30, "torch_vram_total": 0,
                         "torch_vram_free": 0}]})

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form["image"]
        name = getattr(f, "filename", "upload.png")
        return web.json_response({"name": name, "subfolder": form.get("subfolder", ""), "type": "input"})

    async def view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.image, content_type="image/png")

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"busy_s": self.busy_s, "loads": self.loads, "jobs": self.jobs,
                                  "first_start": self.first_start, "last_end": self.last_end, "warm": self.warm,
                                  "intervals": self.intervals})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.add_routes([
            web.post("/prompt", self.post_prompt), web.get("/history", self.get_history),
            web.get("/history/{prompt_id}", self.get_history), web.get("/queue", self.get_queue),
            web.post("/queue", self.post_queue), web.post("/interrupt", self.interrupt),
            web.get("/object_info", self.get_object_info), web.get("/object_info/{node_class}", self.get_object_info),
            web.get("/models", self.get_models), web.get("/models/{folder}", self.get_models),
            web.get("/system_stats", self.system_stats), web.post("/upload/image", self.upload),
            web.get("/view", self.view), web.get("/ws", self.ws), web.get("/medialab/info", self.not_found),
            web.get("/sim/stats", self.stats),
        ])
        return app


async def serve(args: argparse.Namespace) -> None:
    cfg = json.loads(Path(args.config).read_text()) if args.config else {"models": {"sim_model_00.safetensors": 5.0}}
    load_s: dict[str, float] = cfg["models"]
    names = sorted(load_s)
    servers, urls = [], []
    for i in range(args.servers):
        srv = SimServer(i, load_s, args.time_scale, warm=names[i % len(names)], progress_events=args.progress_events)
        runner = web.AppRunner(srv.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        servers.append(srv)
        urls.append(f"http://127.0.0.1:{port}")
        asyncio.get_running_loop().create_task(srv.worker())
    print(json.dumps({"urls": urls}), flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--config", help="JSON file: {\"models\": {file: load seconds}}")
    ap.add_argument("--time-scale", type=float, default=0.05, help="real seconds per simulated second")
    ap.add_argument("--progress-events", type=int, default=5, help="progress messages per job")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
