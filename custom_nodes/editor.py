"""The editor panel's server side (the panel is ``web/medialab.js``): the artist's sign-in to the orchestrator,
kept in this ComfyUI process, and the few orchestrator calls the panel makes, sent on with the stored key.

- The key never reaches the page: the routes say who is signed in (the key's name and roles, the
  orchestrator's URL), never the key, and any echo of it in a forwarded answer is blanked out.
- Only an orchestrator that ``MEDIALAB_EDITOR_ORCHESTRATORS`` lists (comma-separated origins, e.g.
  ``http://10.0.0.5:8000``) can be signed in to, so nothing the page sends makes this server fetch anything
  else; redirects are not followed. Unset, the panel says how to set it.
- A sign-in belongs to the browser that made it: the key stays in this process, under a random session id
  that an HttpOnly, SameSite=Strict cookie carries (no script of the page can read it, no other site's page
  sends it). Without one every forwarding route answers 401 and sends nothing on. A sign-in ends on sign-out,
  on a restart, and after ``MEDIALAB_EDITOR_SIGNIN_HOURS`` (12).
- A request whose ``Origin`` is not this server's own is refused (403), whatever ComfyUI's own checks are,
  and one that changes something must be JSON (a form post from another site cannot be).
- Template names and version numbers are checked before they go into the orchestrator's path.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .urls import UrlRefused, format_origin, parse_origin

ENV = "MEDIALAB_EDITOR_ORCHESTRATORS"
HOURS_ENV = "MEDIALAB_EDITOR_SIGNIN_HOURS"  # how long a sign-in lasts (default 12)
PREFIX = "/medialab/editor"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a template name (the orchestrator's own rule)
TIMEOUT_S = 180.0  # a publish checks the graph on a live pool server
MAX_ANSWER_BYTES = 64 * 1024 * 1024
COOKIE = "medialab_editor"  # names a sign-in of this server; HttpOnly, so the page's scripts never see it
MAX_SESSIONS = 64  # sign-ins kept at once; the oldest makes room
NOT_SIGNED_IN = "not signed in to a Media Lab orchestrator: sign in from the Media Lab panel first"


class EditorError(Exception):
    """An answer of the pack's own: ``status`` and a message for the panel."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def allowed_orchestrators(env: dict[str, str] | None = None) -> list[str]:
    """The origins ``MEDIALAB_EDITOR_ORCHESTRATORS`` lists, normalized (``scheme://host:port``)."""
    raw = (os.environ if env is None else env).get(ENV, "")
    try:
        return [format_origin(parse_origin(entry)) for entry in raw.split(",") if entry.strip()]
    except UrlRefused as exc:
        raise EditorError(500, f"{ENV} on this ComfyUI server: {exc}") from exc


def orchestrator_origin(url: str, allowed: list[str]) -> str:
    """The orchestrator's origin, if ``url`` is one of the allowed (a path, query or credentials are refused)."""
    if not allowed:
        raise EditorError(403, f"this ComfyUI server may not sign in to any orchestrator: set {ENV} to the "
                               "orchestrator's URL (e.g. http://10.0.0.5:8000) in its environment and restart it")
    try:
        origin = format_origin(parse_origin(url))
    except UrlRefused:
        raise EditorError(422, f"url {url[:200]!r} is not an orchestrator URL (http(s)://host[:port])") from None
    if origin not in allowed:
        raise EditorError(403, f"{origin} is not an orchestrator this ComfyUI server may sign in to ({ENV}: "
                               f"{', '.join(allowed)})")
    return origin


def template_path(name: str, version: str | None = None) -> str:
    """The orchestrator's path of a template (and version), from checked parts only."""
    if not NAME.fullmatch(name):
        raise EditorError(422, f"template name {name[:80]!r}: lowercase letters, digits and '-'")
    if version is None:
        return f"/v1/templates/{name}"
    if not version.isascii() or not version.isdigit() or not 0 < int(version) < 2**31:
        raise EditorError(422, f"version {version[:20]!r} is not a version number")
    return f"/v1/templates/{name}/versions/{int(version)}"


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin (None: not sent, as by curl) is the server's own Host."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.netloc.lower() == (host or "").lower()


def blank(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def signin_hours(env: dict[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(HOURS_ENV, "12")
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not 0 < hours <= 24 * 30:
        raise EditorError(500, f"{HOURS_ENV} on this ComfyUI server is {raw!r}: hours, more than 0, at most 720")
    return hours


@dataclass
class SignIn:
    url: str
    key: str
    who: dict[str, Any]  # the orchestrator's /v1/me: key id, name, roles
    ends: float  # time.monotonic() when it ends

    def public(self) -> dict[str, Any]:
        return {"signed_in": True, "url": self.url, "name": self.who.get("name"), "roles": self.who.get("roles", []),
                "can_publish": bool(self.who.get("can_publish")), "ends_in_s": round(self.ends - time.monotonic())}


class Link:
    """The sign-ins of this ComfyUI server, one per browser: a random session id in an HttpOnly cookie names a
    sign-in kept here (the key never leaves the process), and the calls made with it."""

    def __init__(self, env: dict[str, str] | None = None, most: int = MAX_SESSIONS) -> None:
        self.env = env
        self.most = most
        self.sessions: dict[str, SignIn] = {}

    def current(self, session: str | None) -> SignIn | None:
        now = time.monotonic()
        for sid in [sid for sid, s in self.sessions.items() if now >= s.ends]:
            del self.sessions[sid]
        return self.sessions.get(session) if session else None

    def state(self, session: str | None) -> dict[str, Any]:
        allowed = allowed_orchestrators(self.env)
        signed = self.current(session)
        if signed is None:
            return {"signed_in": False, "orchestrators": allowed}
        return {**signed.public(), "orchestrators": allowed}

    async def sign_in(self, url: str, key: str, session: str | None = None) -> tuple[str, dict[str, Any]]:
        """A new session (replacing ``session``, the browser's current one): its id and its state."""
        origin = orchestrator_origin(url, allowed_orchestrators(self.env))
        key = key.strip()
        if not key or len(key) > 512 or not key.isascii() or not key.isprintable():
            raise EditorError(422, "api_key: paste the whole API key (mlk_...)")
        status, body = await call(origin, key, "GET", "/v1/me")
        if status in (401, 403):
            raise EditorError(401, "the orchestrator refused this API key: " + detail(body, key))
        if status != 200 or not isinstance(body, dict):
            raise EditorError(502, f"{origin} did not answer as a Media Lab orchestrator (GET /v1/me: {status})")
        self.sign_out(session)
        self.current(None)  # the ended ones go first
        while len(self.sessions) >= self.most:  # the oldest sign-in makes room
            del self.sessions[min(self.sessions, key=lambda sid: self.sessions[sid].ends)]
        sid = secrets.token_urlsafe(32)
        ends = time.monotonic() + signin_hours(self.env) * 3600
        self.sessions[sid] = SignIn(url=origin, key=key, who=body, ends=ends)
        return sid, self.state(sid)

    def sign_out(self, session: str | None) -> dict[str, Any]:
        self.sessions.pop(session or "", None)
        return self.state(None)

    async def forward(self, session: str | None, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        signed = self.current(session)
        if signed is None:
            raise EditorError(401, NOT_SIGNED_IN)
        status, answer = await call(signed.url, signed.key, method, path, body)
        if status == 401:  # revoked or expired there: this sign-in is over
            self.sign_out(session)
            raise EditorError(401, "the orchestrator no longer takes this API key (revoked?): sign in again; "
                                   + detail(answer, signed.key))
        return status, answer


async def call(origin: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the orchestrator: (status, the JSON answer with the key blanked out, or a message)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as client, client.request(
                method, origin + path, json=body, allow_redirects=False,
                headers={"X-API-Key": key, "Accept": "application/json"}) as r:
            raw = await r.content.read(MAX_ANSWER_BYTES + 1)
            if len(raw) > MAX_ANSWER_BYTES:
                raise EditorError(502, f"the orchestrator's answer to {method} {path} is over "
                                       f"{MAX_ANSWER_BYTES >> 20} MiB")
            text = blank(raw.decode("utf-8", "replace"), key)
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, {"detail": text[:500]}
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EditorError(502, f"cannot reach the orchestrator at {origin}: {type(exc).__name__} {exc}") from None


def detail(body: Any, key: str) -> str:
    text = body.get("detail") if isinstance(body, dict) else None
    return blank(str(text or body)[:500], key)


def register(routes: Any, link: Link) -> None:
    """The panel's routes on ComfyUI's route table (served at /medialab/editor/... and /api/medialab/...)."""
    from aiohttp import web

    def answer(status: int, body: Any) -> web.Response:
        return web.json_response(body, status=status)

    def guarded(handler: Any, writes: bool = False) -> Any:
        async def run(request: web.Request) -> web.Response:
            try:
                if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
                    raise EditorError(403, "this request comes from another site's page")
                if writes and request.method != "DELETE" and request.content_type != "application/json":
                    raise EditorError(415, "send JSON (Content-Type: application/json)")
                return await handler(request)
            except EditorError as exc:
                return answer(exc.status, {"detail": exc.message})

        return run

    async def body_of(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise EditorError(422, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise EditorError(422, "the body is not a JSON object")
        return body

    def session_of(request: web.Request) -> str | None:
        return request.cookies.get(COOKIE)

    async def get_session(request: web.Request) -> web.Response:
        return answer(200, link.state(session_of(request)))

    async def post_session(request: web.Request) -> web.Response:
        body = await body_of(request)
        url, key = body.get("url"), body.get("api_key")
        if not isinstance(url, str) or not isinstance(key, str):
            raise EditorError(422, "send {\"url\": the orchestrator's URL, \"api_key\": your API key}")
        sid, state = await link.sign_in(url, key, session_of(request))
        response = answer(200, state)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/", secure=request.secure,
                            max_age=round(signin_hours(link.env) * 3600))
        return response

    async def delete_session(request: web.Request) -> web.Response:
        response = answer(200, link.sign_out(session_of(request)))
        response.del_cookie(COOKIE, path="/")
        return response

    async def templates(request: web.Request) -> web.Response:
        return answer(*await link.forward(session_of(request), "GET", "/v1/templates"))

    async def version(request: web.Request) -> web.Response:
        m = request.match_info
        return answer(*await link.forward(session_of(request), "GET", template_path(m["name"], m["version"])))

    async def workflow(request: web.Request) -> web.Response:
        m = request.match_info
        path = template_path(m["name"], m["version"]) + "/workflow"
        return answer(*await link.forward(session_of(request), "GET", path))

    async def preview(request: web.Request) -> web.Response:
        path = template_path(request.match_info["name"]) + "/preview"
        return answer(*await link.forward(session_of(request), "POST", path, await body_of(request)))

    async def publish(request: web.Request) -> web.Response:
        path = template_path(request.match_info["name"]) + "/versions"
        return answer(*await link.forward(session_of(request), "POST", path, await body_of(request)))

    async def model_folder(request: web.Request) -> web.Response:
        """The models folders of this server that hold the file (the panel makes a model picker of it)."""
        import folder_paths

        file = request.query.get("file", "")
        names = [f for f in folder_paths.folder_names_and_paths if f not in ("custom_nodes", "configs")]
        return answer(200, {"folders": [f for f in names if file and file in folder_paths.get_filename_list(f)]})

    routes.get(f"{PREFIX}/model-folder")(guarded(model_folder))
    routes.get(f"{PREFIX}/session")(guarded(get_session))
    routes.post(f"{PREFIX}/session")(guarded(post_session, writes=True))
    routes.delete(f"{PREFIX}/session")(guarded(delete_session, writes=True))
    routes.get(f"{PREFIX}/templates")(guarded(templates))
    routes.get(f"{PREFIX}/templates/{{name}}/versions/{{version}}")(guarded(version))
    routes.get(f"{PREFIX}/templates/{{name}}/versions/{{version}}/workflow")(guarded(workflow))
    routes.post(f"{PREFIX}/templates/{{name}}/preview")(guarded(preview, writes=True))
    routes.post(f"{PREFIX}/templates/{{name}}/versions")(guarded(publish, writes=True))
