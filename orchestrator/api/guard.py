"""The request guard: the API key and its role are checked, and the body size capped, before a route reads
the body.

FastAPI reads (and, for multipart, spools) a request body before it runs a route's dependencies, so a key
check in a dependency comes after the upload. This ASGI middleware finds the route first, checks the key and
the roles that route needs (the ``require`` dependency of ``api/deps.py`` records them), and refuses a body
over its limit from ``Content-Length`` at once or, when streamed, as soon as it passes the limit. The key row
travels on ``scope["state"]["api_key"]`` to the route's dependencies, which read it instead of querying again.

A checked key row is kept for ``key_cache_s`` (``KeyCache``), so a burst of requests with one key reads its row
once: expiry and the roles are checked on every request against the kept row; a revoke or rotation written
through this process's engine empties the cache at once, one written by another process (a worker, a replica,
the CLI) is seen within ``key_cache_s``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import anyio
import anyio.to_thread
from sqlalchemy import Engine, event
from sqlalchemy.sql.dml import UpdateBase
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.problems import send_problem
from orchestrator.api.routing import RouteNeeds, api_routes, needs
from orchestrator.app import keys as key_app
from orchestrator.core import keys
from orchestrator.core.errors import MediaLabError, TooLarge
from orchestrator.core.limits import CONTROL
from orchestrator.db.tables import ApiKey, now

Message = MutableMapping[str, Any]
KEY_CHECKS = 4  # key checks at once (each a database connection for a moment): a burst of requests, such as
# hundreds of event streams opening together, waits here instead of emptying the connection pool


def key_from_headers(headers: dict[str, str]) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return headers.get("x-api-key")


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._table: list[tuple[re.Pattern[str], set[str], RouteNeeds]] | None = None
        self._checks: anyio.CapacityLimiter | None = None

    def _needs(self, scope: Scope) -> RouteNeeds | None:
        """What the request's route needs (None: no such route; the app answers 404 or 405)."""
        if self._table is None:
            self._table = [(compile_path(path)[0], methods, needs(route))
                           for path, methods, route in api_routes(scope["app"].routes)]
        path, method = route_path(scope), scope["method"]
        for regex, methods, route_needs in self._table:
            if method in methods and regex.match(path):
                return route_needs
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        where = control_character(scope)
        if where:
            await send_problem(send, 422, "Invalid request", f"the request's {where} holds a control character "
                               "(NUL, newline, ...): no name, id or query value may")
            return
        route = self._needs(scope)
        if route is not None and route.roles is not None:
            ctx = scope["app"].state.ctx
            try:
                if self._checks is None:  # made in the app's own event loop
                    self._checks = anyio.CapacityLimiter(KEY_CHECKS)
                given = key_from_headers(headers)
                key = cached_key(ctx, given, route.roles)  # a cache hit costs no thread and no connection
                if key is None:
                    key = await anyio.to_thread.run_sync(check_key, ctx, given, route.roles, limiter=self._checks)
            except MediaLabError as exc:
                await send_problem(send, exc.status, exc.title, exc.message, **exc.extra)
                return
            scope.setdefault("state", {})["api_key"] = key
        settings = scope["app"].state.ctx.settings
        # the route decides which cap applies, never the caller's Content-Type
        limit, name = ((settings.max_upload_bytes, "max_upload_bytes") if route is not None and route.form
                       else (settings.max_body_bytes, "max_body_bytes"))
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            exc = TooLarge(f"request body of {declared} bytes is over the limit {name}={limit}", limit=name,
                           value=limit)
            await send_problem(send, exc.status, exc.title, exc.message, **exc.extra)
            return
        receive, send = capped(receive, send, limit, name)
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path the routes match: without the ``root_path`` the app is mounted under (``--root-path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def control_character(scope: Scope) -> str | None:
    """'path' or 'query' when that part of the URL, percent-decoded, holds a control character (a NUL in an id
    would reach the database, which refuses it), else None."""
    if CONTROL.search(scope["path"]):
        return "path"
    if CONTROL.search(unquote_plus(scope.get("query_string", b"").decode("latin-1"))):
        return "query"
    return None


class KeyCache:
    """Key rows this process checked, by the key's hash, each trusted for ``ttl_s`` after it was read.

    Only usable keys are kept (an unknown key is read every time, and a flood of wrong keys fills nothing).
    Any INSERT, UPDATE or DELETE of ``api_keys`` through ``engine`` empties the cache when it runs and again
    when its transaction ends, and a read that began before either is not kept: a revoke through this process
    is refused from its commit on. The rows are detached, shared by the requests that use them, and only read.
    """

    MAX_KEYS = 4096

    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._rows: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every change of api_keys: a read older than it is not kept
        event.listen(engine, "after_execute", self._seen_statement)
        event.listen(engine, "commit", self._transaction_ended)
        event.listen(engine, "rollback", self._transaction_ended)

    def generation(self) -> int:
        return self._generation

    def get(self, key_hash: str) -> ApiKey | None:
        hit = self._rows.get(key_hash)
        if hit is None or time.monotonic() - hit[0] > self.ttl_s:
            return None
        return hit[1]

    def put(self, key_hash: str, row: ApiKey, generation: int, read_at: float) -> None:
        """Keep ``row`` (read at ``read_at``, monotonic) unless api_keys changed since ``generation``."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._rows) >= self.MAX_KEYS:
                self._rows.clear()
            self._rows[key_hash] = (read_at, row)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._rows.clear()

    def _seen_statement(self, conn: Any, clause: Any, *_args: Any) -> None:
        if isinstance(clause, UpdateBase) and getattr(clause.table, "name", None) == ApiKey.__tablename__:
            conn.info["medialab_keys_written"] = True
            self.clear()

    def _transaction_ended(self, conn: Any) -> None:
        if conn.info.pop("medialab_keys_written", False):
            self.clear()


def key_cache(ctx: Any) -> KeyCache:
    """The process's ``KeyCache`` of ``ctx`` (made on first use)."""
    cache = getattr(ctx, "key_cache", None)
    if cache is None:
        with _CACHE_LOCK:
            cache = getattr(ctx, "key_cache", None)
            if cache is None:
                cache = ctx.key_cache = KeyCache(ctx.db.engine, ctx.settings.key_cache_s)
    return cache


_CACHE_LOCK = threading.Lock()


def cached_key(ctx: Any, key: str | None, roles: tuple[keys.Role, ...]) -> ApiKey | None:
    """``check_key`` from the ``KeyCache`` alone, where that needs no database (no touch due): the key, checked;
    None where ``check_key`` has to run."""
    row = key_cache(ctx).get(keys.hash_key(key)) if key else None
    if row is None:
        return None
    at = now()
    if keys.needs_touch(row.last_used_at, at):
        return None
    keys.check_usable(row, at)
    keys.authorize(row, *roles)
    return row


def check_key(ctx: Any, key: str | None, roles: tuple[keys.Role, ...]) -> ApiKey:
    """Authenticate and authorize; a key not in the ``KeyCache`` is read with a session of its own, closed before
    the route runs (a long request, such as an event stream, holds no database connection for its key)."""
    cache, key_hash = key_cache(ctx), keys.hash_key(key) if key else ""
    row = cache.get(key_hash) if key else None
    if row is not None:
        keys.check_usable(row, now())  # expired (or past a rotation's grace) since it was read: refused now
    else:
        generation, read_at = cache.generation(), time.monotonic()
        with ctx.db.session() as s:
            row = key_app.authenticate(s, key)  # no key, an unknown or revoked one: refused here
            s.expunge(row)
        cache.put(key_hash, row, generation, read_at)
    keys.authorize(row, *roles)
    if keys.needs_touch(row.last_used_at, now()):  # last_used_at, at most once a minute per key
        with ctx.db.session() as s:
            key_app.touch(s, row)
    return row


def capped(receive: Receive, send: Send, limit: int, name: str) -> tuple[Receive, Send]:
    """A ``receive`` that answers 413 and ends the request once the body passes ``limit`` bytes, and a
    ``send`` that then drops the route's own answer."""
    seen = 0
    answered = False

    async def receive_capped() -> Message:
        nonlocal seen, answered
        if answered:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                answered = True
                exc = TooLarge(f"request body is over the limit {name}={limit}", limit=name, value=limit)
                await send_problem(send, exc.status, exc.title, exc.message, **exc.extra)
                return {"type": "http.disconnect"}
        return message

    async def send_unless_answered(message: Message) -> None:
        if not answered:
            await send(message)

    return receive_capped, send_unless_answered
