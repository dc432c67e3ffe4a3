"""An authenticating reverse proxy in front of a real ComfyUI: it stands in for the nginx/Caddy a deployment puts
in front of a remote ComfyUI (ComfyUI itself has no authentication).

``AuthProxy(target_url, token="t").start()`` listens on a free port of 127.0.0.1 (``.url``) in a background
thread with its own event loop; ``.stop()`` ends it. Every request without the right ``Authorization`` header
(``Bearer <token>``, or ``Basic`` of ``basic=(user, password)``; either is accepted when both are set) is refused
with 401 and a ``WWW-Authenticate`` challenge, as nginx's ``auth_basic`` or Caddy's ``basic_auth`` do. The rest is
forwarded to the target: every HTTP method with its query and body (both streamed), and the ``/ws`` websocket
both ways (text and binary frames). The ``Authorization`` header is consumed here, not passed on.

``refused``, ``forwarded`` and ``ws_frames`` (frames from ComfyUI to the client) count what went through, so a
test can tell the proxy was really in the path.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import threading
from typing import Any

import aiohttp
from aiohttp import web

from orchestrator.comfy.worker import free_port

# hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy sets itself
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "authorization", "content-length"}


class AuthProxy:
    def __init__(self, target_url: str, token: str | None = None, basic: tuple[str, str] | None = None) -> None:
        self.target = target_url.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._accepted: list[str] = []
        if token:
            self._accepted.append(f"Bearer {token}")
        if basic:
            self._accepted.append("Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii"))
        self._challenge = 'Basic realm="comfyui"' if basic and not token else 'Bearer realm="comfyui"'
        self.refused = 0
        self.forwarded = 0
        self.ws_frames = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._thread = threading.Thread(target=self._serve, name=f"auth proxy :{self.port}", daemon=True)

    def start(self) -> AuthProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("auth proxy did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"auth proxy did not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> AuthProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server --------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _setup(self) -> None:
        # no decompression: the bytes (and their Content-Encoding) go back as ComfyUI sent them
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=1 << 34)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _allowed(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return not self._accepted or any(hmac.compare_digest(given.encode(), a.encode()) for a in self._accepted)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self._allowed(request):
            self.refused += 1
            return web.Response(status=401, text="401 Authorization Required",
                                headers={"WWW-Authenticate": self._challenge})
        self.forwarded += 1
        if request.path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return await self._http(request)

    async def _http(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        data: Any = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(request.method, self.target + request.path_qs, headers=headers,
                                                   data=data, allow_redirects=False)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"502 Bad Gateway: {exc}")
        async with upstream:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                     headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP})
            if upstream.content_length is not None:
                out.content_length = upstream.content_length
            await out.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await out.write(chunk)
            await out.write_eof()
            return out

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        try:
            up = await self._session.ws_connect(self.target + request.path_qs, max_msg_size=0, autoping=True)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"502 Bad Gateway: {exc}")
        down = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await down.prepare(request)
        self._sockets.add(down)

        async def pump(src: Any, dst: Any, count: bool) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:  # CLOSE / ERROR end this direction
                    break
                if count:
                    self.ws_frames += 1

        tasks = [asyncio.ensure_future(pump(up, down, True)), asyncio.ensure_future(pump(down, up, False))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await up.close()
            await down.close()
            self._sockets.discard(down)
        return down
