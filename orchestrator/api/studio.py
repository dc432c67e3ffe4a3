"""The browser faces served by the service itself, offline: the studio (``studio/dist``, a single-page app,
under ``/studio``) and the API reference (``/docs``, Swagger UI from ``studio/dist/swagger/``).

Neither needs a key (they are static files; every call they make sends one) and neither loads anything from
outside the service. The build is read from ``settings.studio_dir`` at each request, so a build made after the
service started is served at once; while it is missing, both answer a page saying how to build it."""

from __future__ import annotations

import html
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

SETUP = "bash scripts/setup.sh"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
NO_FAVICON = "data:,"  # no request for a favicon (the CDN default of FastAPI is not used)


def missing_page(what: str, detail: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(what)} is not built</title>"
            f"</head><body><h1>{html.escape(what)} is not built</h1><p>{detail}</p></body></html>")


def studio_dir(scope: Scope) -> Path:
    return Path(scope["app"].state.ctx.settings.studio_dir)


class Studio:
    """The ASGI app mounted at ``/studio``: files of the build, and ``index.html`` for any other path that
    does not name a file (a deep link such as ``/studio/jobs/<id>``: the app's router reads it). A missing
    asset (``/studio/assets/x.js``) is 404, not the page. No build: 503 naming ``scripts/setup.sh``."""

    def __init__(self) -> None:
        self._files: dict[Path, StaticFiles] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = studio_dir(scope)
        index = root / "index.html"
        if not index.is_file():
            page = missing_page("The studio", f"No build at <code>{html.escape(str(root))}</code>: run "
                                f"<code>{SETUP}</code> (it runs <code>npm run build</code>), or set "
                                "MEDIALAB_STUDIO_DIR to a built <code>studio/dist</code>.")
            await HTMLResponse(page, status_code=503)(scope, receive, send)
            return
        files = self._files.get(root)
        if files is None:
            files = self._files[root] = StaticFiles(directory=root, html=True)
        path = files.get_path(scope)
        response: Response
        try:
            response = await files.get_response(path, scope)
            if path in ("", ".", "index.html") or PurePosixPath(path).name == "index.html":
                response.headers["Cache-Control"] = "no-cache"
        except HTTPException as exc:
            if exc.status_code != 404 or "." in PurePosixPath(path).name:
                raise
            response = FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
        await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """``/studio`` and the offline ``/docs`` (the app is made with ``docs_url=None, redoc_url=None``)."""
    app.mount("/studio", Studio(), name="studio")

    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        swagger = studio_dir(request.scope) / "swagger"
        if not all((swagger / name).is_file() for name in SWAGGER_FILES):
            page = missing_page("The API reference", f"Swagger UI's files are not in "
                                f"<code>{html.escape(str(swagger))}</code>: run <code>{SETUP}</code> (the studio's "
                                f"build copies them from the npm package swagger-ui-dist). The OpenAPI document "
                                f"itself is at <a href=\"{root}{app.openapi_url}\">{root}{app.openapi_url}</a>.")
            return HTMLResponse(page, status_code=503)
        params: dict[str, Any] = {"validatorUrl": None}  # Swagger UI's default sends the spec to swagger.io
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                                   swagger_js_url=f"{root}/studio/swagger/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/studio/swagger/swagger-ui.css",
                                   swagger_favicon_url=NO_FAVICON, swagger_ui_parameters=params)

    app.add_route("/docs", docs, include_in_schema=False)
