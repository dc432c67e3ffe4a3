"""Publishing from inside ComfyUI: the node pack's Media Lab panel in a real browser (headless Debian chromium,
Playwright) on a real ComfyUI 0.3.75 with the pack, signed in to a real `medialab serve` in its own process.

One service, one ComfyUI and one browser for the module. The ComfyUI server is this module's own: it is started
with MEDIALAB_EDITOR_ORCHESTRATORS naming the service. The artist signs in, opens upscale-esrgan v2 onto the
canvas, changes two widgets, reviews the manifest and diff, publishes v3 and a job runs on it; makes an input a
parameter from the node's context menu and publishes v4; a publish with an unlinked input shows the error on that
node, and nothing is stored; a new template built on an empty canvas is published and runs. The pack's routes
refuse to act without a sign-in, refuse a wrong key, a foreign origin and a form post; a sign-in is the browser's
that made it (an HttpOnly cookie), and the key appears in no response the page or curl gets, nor in the page, its
storage or its cookies. Screenshots go to .runtime/screenshots/editor/ (listed in index.txt there)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.comfy.worker import LocalWorker
from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, MODELS, RUNTIME, png_bytes
from tests.integration.test_cli_remote import served
from tests.integration.test_serve_workers import free_port
from tests.integration.test_studio_browser import CHROMIUM, index_screenshots, pool_ready, service_home

playwright_api = pytest.importorskip("playwright.sync_api", reason="the PyPI package playwright is not installed "
                                     "(pip install -e '.[dev]')")

SCREENSHOTS = PROJECT_ROOT / ".runtime" / "screenshots" / "editor"
TIMEOUT_MS = 60_000
FRAME = (64, 48)
ROUTES = "/api/medialab/editor"
# what the ComfyUI frontend 1.32.9 logs on every load here, with or without the pack (no internet; a frontend
# bug setting a render option before its definition): not the panel's
FRONTEND_NOISE = (re.compile(r"^Failed to load resource"),
                  re.compile(r"Cannot read properties of undefined \(reading 'id'\)[\s\S]*at onChange"))


@dataclass
class Stack:
    service: str  # the orchestrator's URL
    comfy: str
    keys: dict[str, str]
    seen: list[str] = field(default_factory=list)  # the text of every pack response the page and the tests got
    shots: dict[str, str] = field(default_factory=dict)

    def api(self, method: str, path: str, role: str = "publish", **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.service}{path}", headers={"X-API-Key": self.keys[role]}, timeout=60,
                             **kw)

    def pack(self, method: str, path: str, browser: httpx.Client | None = None, **kw: Any) -> httpx.Response:
        """A call of the pack's routes, from ``browser`` (a client keeping its cookies) or from a client of its own."""
        if browser is None:
            with httpx.Client(timeout=60) as fresh:
                return self.pack(method, path, fresh, **kw)
        r = browser.request(method, f"{self.comfy}{ROUTES}{path}", **kw)
        self.seen.append(f"{r.headers} {r.text}")
        return r


def seed_user_dir(base: Path) -> None:
    """The frontend's first-load dialog off, and the user files it asks for present (else 404s in the console)."""
    user = base / "user" / "default"
    for sub in ("workflows", "subgraphs"):
        (user / sub).mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    (user / "user.css").write_text("")
    (user / "comfy.templates.json").write_text("[]")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (scripts/setup.sh does it as root)")
    if not (RUNTIME / "main.py").exists() or not (MODELS / "upscale_models" / FIXTURE_MODEL).exists():
        pytest.skip(f"no ComfyUI runtime or fixture model under {RUNTIME.parent}: run scripts/setup.sh first")
    root = tmp_path_factory.mktemp("editor-panel")
    home, keys = service_home(root, "publish", "run")
    port = free_port()  # the ComfyUI's, known before the service starts: each names the other
    comfy = f"http://127.0.0.1:{port}"
    env = {"MEDIALAB_COMFY_SERVERS": json.dumps([comfy]), "MEDIALAB_LOCAL_TRAINER": "false"}
    with served(home, env=env) as service:
        base = root / "comfy"
        seed_user_dir(base)
        worker = LocalWorker(RUNTIME, MODELS, base, port=port, device="cpu",
                             env={"MEDIALAB_EDITOR_ORCHESTRATORS": service})
        worker.start()
        try:
            pool_ready(service, keys["run"])
            yield Stack(service=service, comfy=comfy, keys=keys)
        finally:
            worker.stop()


@pytest.fixture(scope="module", autouse=True)
def screenshot_index(stack: Stack) -> Iterator[None]:
    yield
    index_screenshots(stack.shots, SCREENSHOTS, "editor")


def test_the_pack_refuses_without_a_sign_in_and_never_returns_the_key(stack: Stack) -> None:
    key = stack.keys["publish"]
    state = stack.pack("GET", "/session").json()
    assert state == {"signed_in": False, "orchestrators": [stack.service]}
    for method, path in (("GET", "/templates"), ("GET", "/templates/upscale-esrgan/versions/1/workflow"),
                         ("POST", "/templates/upscale-esrgan/preview"), ("POST", "/templates/upscale-esrgan/versions")):
        r = stack.pack(method, path, json={"graph": {}} if method == "POST" else None)
        assert r.status_code == 401 and "not signed in" in r.json()["detail"], (path, r.text)

    assert stack.pack("POST", "/session", data={"url": stack.service, "api_key": key}).status_code == 415
    foreign = stack.pack("POST", "/session", json={"url": stack.service, "api_key": key},
                         headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403, foreign.text
    other = stack.pack("POST", "/session", json={"url": "http://127.0.0.1:9", "api_key": key})
    assert other.status_code == 403 and "is not an orchestrator this ComfyUI server may sign in to" in other.text
    pathy = stack.pack("POST", "/session", json={"url": f"{stack.service}/v1/keys", "api_key": key})
    assert pathy.status_code == 422 and "not an orchestrator URL" in pathy.text
    wrong = stack.pack("POST", "/session", json={"url": stack.service, "api_key": "mlk_" + "x" * 40})
    assert wrong.status_code == 401 and "refused this API key" in wrong.json()["detail"], wrong.text
    assert stack.pack("GET", "/session").json()["signed_in"] is False

    with httpx.Client(timeout=60) as artist:  # a browser: its cookies kept
        signed = stack.pack("POST", "/session", artist, json={"url": stack.service, "api_key": key})
        assert signed.status_code == 200, signed.text
        assert signed.json() | {"orchestrators": None, "ends_in_s": None} == {
            "signed_in": True, "url": stack.service, "name": "studio-publish", "roles": ["publish"],
            "can_publish": True, "orchestrators": None, "ends_in_s": None}
        assert 12 * 3600 - 60 < signed.json()["ends_in_s"] <= 12 * 3600
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("medialab_editor=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        listed = stack.pack("GET", "/templates", artist)
        assert listed.status_code == 200 and "upscale-esrgan" in {t["name"] for t in listed.json()}
        # the sign-in is that browser's: another one (or a forged session id) is not signed in
        assert stack.pack("GET", "/session").json()["signed_in"] is False
        assert stack.pack("GET", "/templates").status_code == 401
        with httpx.Client(timeout=60, cookies={"medialab_editor": "forged"}) as forger:
            assert stack.pack("GET", "/templates", forger).status_code == 401
        assert stack.pack("GET", "/templates/..%2Fkeys/versions/1", artist).status_code in (404, 422)
        assert stack.pack("GET", "/templates/upscale-esrgan/versions/0x1", artist).status_code == 422
        assert stack.pack("GET", "/templates/upscale-esrgan/versions/9/workflow", artist).status_code == 404
        gone = stack.pack("DELETE", "/session", artist)
        assert gone.json()["signed_in"] is False and 'medialab_editor=""' in gone.headers["set-cookie"]
        assert stack.pack("GET", "/templates", artist).status_code == 401
    leaked = [text[:200] for text in stack.seen if key in text]
    assert not leaked and len(stack.seen) > 10, leaked


class Editor:
    """ComfyUI's editor in a page of its own context; every page error and console error (but the frontend's
    own noise) fails the test, and every answer of the pack's routes is kept."""

    def __init__(self, browser: Any, stack: Stack) -> None:
        self.stack = stack
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1600, "height": 1000})
        self.page = page = self.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", self._console)
        page.on("response", self._response)
        page.goto(stack.comfy + "/")
        page.wait_for_function("() => window.app?.graph && window.app.extensionManager?.sidebarTab")
        page.locator(".medialab-tab-button").click()
        playwright_api.expect(page.get_by_test_id("ml-panel")).to_be_visible()

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(p.search(msg.text) for p in FRONTEND_NOISE):
            self.errors.append(f"console error: {msg.text} ({msg.location})")

    def _response(self, response: Any) -> None:
        if "/medialab/" in response.url:
            try:
                self.stack.seen.append(response.text())
            except Exception as exc:  # a redirect or an aborted request has no body
                self.stack.seen.append(f"<{exc}>")

    def shot(self, name: str, what: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=path)
        self.stack.shots[str(path.relative_to(PROJECT_ROOT))] = what

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def node_id(self, title: str) -> int:
        found = self.js("t => app.graph.nodes.filter(n => n.title === t).map(n => n.id)", title)
        assert len(found) == 1, f"{title!r}: {found}"
        return found[0]

    def set_widget(self, title: str, widget: str, value: Any) -> None:
        self.js("""([id, name, value]) => { const n = app.graph.getNodeById(id);
                   const w = n.widgets.find(w => w.name === name); w.value = value; w.callback?.(value);
                   app.graph.setDirtyCanvas(true, true); }""", [self.node_id(title), widget, value])

    def menu(self, title: str, *entries: str) -> None:
        """Right-click the node on the canvas and click through its context menu."""
        x, y = self.js("""id => { const n = app.graph.getNodeById(id);
                          return app.canvasPosToClientPos([n.pos[0] + n.size[0] / 2, n.pos[1] - 15]); }""",
                       self.node_id(title))  # on the title bar (above pos), clear of slots and widgets
        self.page.mouse.click(x, y, button="right")
        for entry in entries:
            self.page.locator(".litecontextmenu .litemenu-entry", has_text=entry).last.click()

    def review(self) -> None:
        self.page.get_by_test_id("ml-review").click()
        playwright_api.expect(self.page.get_by_test_id("ml-checking")).to_have_count(0)
        playwright_api.expect(self.page.get_by_test_id("ml-preview").or_(
            self.page.get_by_test_id("ml-review-error"))).to_be_visible()

    def close(self) -> None:
        storage = self.js("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), "
                          "document.cookie])")
        page_text = self.page.content()
        self.context.close()
        key = self.stack.keys["publish"]
        assert key not in storage and key not in page_text, "the API key is in the page or its storage"
        assert not self.errors, "errors in the browser:\n" + "\n".join(self.errors)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    playwright_api.expect.set_options(timeout=30_000)  # a review or publish checks the graph on a busy pool
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()
    playwright_api.expect.set_options(timeout=5_000)  # Playwright's default


def job_size(stack: Stack, version: int | None, params: dict[str, Any],
             template: str = "upscale-esrgan") -> tuple[int, int]:
    """The size of the one output of a job on the version (None: the newest), with a FRAME-sized image."""
    frame = stack.api("POST", "/v1/artifacts", role="run",
                      files={"file": ("frame.png", png_bytes(*FRAME), "image/png")}).json()
    r = stack.api("POST", "/v1/jobs", role="run", json={"template": template, "version": version,
                                                        "params": {"image": frame["id"], **params}})
    assert r.status_code in (200, 201, 202), r.text
    for _ in range(600):
        job = stack.api("GET", f"/v1/jobs/{r.json()['id']}", role="run").json()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.2)
    assert job["state"] == "SUCCEEDED" and job["version"] == (version or job["version"]), job
    return job["outputs"][0]["width"], job["outputs"][0]["height"]


def test_the_artist_opens_changes_reviews_and_publishes_from_the_editor(stack: Stack, browser: Any) -> None:
    expect = playwright_api.expect
    editor = Editor(browser, stack)
    page = editor.page
    try:
        expect(page.get_by_test_id("ml-url")).to_have_value(stack.service)
        editor.shot("01-sign-in", "the Media Lab panel: sign in (the orchestrator's URL, an API key)")
        page.get_by_test_id("ml-key").fill("mlk_" + "y" * 40)
        page.get_by_test_id("ml-signin").click()
        expect(page.get_by_test_id("ml-signin-error")).to_contain_text("refused this API key")
        page.get_by_test_id("ml-key").fill(stack.keys["publish"])
        page.get_by_test_id("ml-signin").click()
        expect(page.get_by_test_id("ml-whoami")).to_contain_text(f"Signed in to {stack.service} as studio-publish")
        expect(page.get_by_test_id("ml-template-upscale-esrgan")).to_be_visible()
        editor.shot("02-templates", "signed in: the templates and their versions")

        # open v2 onto the canvas
        page.get_by_test_id("ml-version-upscale-esrgan").select_option("2")
        page.get_by_test_id("ml-open-upscale-esrgan").click()
        page.wait_for_function("() => app.graph.nodes.some(n => n.title === 'Resize')")
        expect(page.get_by_test_id("ml-origin")).to_have_text("Opened from upscale-esrgan@v2")
        expect(page.get_by_test_id("ml-publish-kind")).to_have_value("")  # the version's own kind
        assert editor.js("() => app.graph.extra.medialab.version") == 2
        editor.shot("03-opened", "upscale-esrgan v2 opened onto the canvas from the panel")

        # change two widgets, review, publish v3
        editor.set_widget("Upscale model", "model_name", FIXTURE_MODEL)
        editor.set_widget("Resize", "scale_by", 0.5)
        page.get_by_test_id("ml-publish-description").fill("The fixture model, then half size.")
        editor.review()
        expect(page.get_by_test_id("ml-preview")).to_contain_text("Will publish upscale-esrgan@v3")
        expect(page.get_by_test_id("ml-preview")).to_contain_text("diff against v2")
        expect(page.get_by_test_id("ml-diff-parameters-changed")).to_have_text("~ changed: model, resize")
        expect(page.get_by_test_id("ml-diff-nodes-changed")).to_have_text("~ changed: Resize, Upscale model")
        expect(page.get_by_test_id("ml-diff-detail-nodes-Resize")).to_have_text("Resize: scale_by 1 → 0.5")
        expect(page.get_by_test_id("ml-diff-field-description")).to_contain_text("→ The fixture model, then half size.")
        expect(page.get_by_test_id("ml-diff-detail-parameters-resize")).to_have_text("resize: default 1 → 0.5")
        expect(page.get_by_test_id("ml-param-resize")).to_contain_text("0.5")
        editor.shot("04-review", "the review: the manifest read from the graph and the diff against v2")
        page.get_by_test_id("ml-confirm").click()
        expect(page.get_by_test_id("ml-published")).to_contain_text("Published upscale-esrgan@v3")
        assert editor.js("() => app.graph.extra.medialab.version") == 3
        editor.shot("05-published", "published: upscale-esrgan@v3")

        v3 = stack.api("GET", "/v1/templates/upscale-esrgan/versions/3").json()
        assert v3["source"] == "published" and v3["description"] == "The fixture model, then half size."
        defaults = {p["name"]: p.get("default") for p in v3["manifest"]["parameters"]}
        assert defaults["model"] == FIXTURE_MODEL and defaults["resize"] == 0.5
        assert {n["_meta"]["title"]: n["inputs"] for n in v3["graph"].values()}["Resize"]["scale_by"] == 0.5
        assert job_size(stack, 3, {}) == (FRAME[0] * 2, FRAME[1] * 2)  # 4x, then half

        # make Resize's scale_by a parameter from the node's context menu; name it zoom; publish v4
        editor.menu("Resize", "Media Lab: make a parameter", "scale_by")
        page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'MediaLabParamFloat')")
        param = editor.js("""() => { const n = app.graph.nodes.find(n => n.type === 'MediaLabParamFloat');
                             const r = app.graph.nodes.find(n => n.title === 'Resize');
                             const slot = r.inputs.find(i => i.name === 'scale_by');
                             return {title: n.title, values: Object.fromEntries(n.widgets.map(w => [w.name, w.value])),
                                     linked: app.graph.links[slot.link]?.origin_id === n.id}; }""")
        assert param["linked"] and param["title"] == "param scale_by", param
        assert (param["values"]["name"], param["values"]["value"]) == ("scale_by", 0.5)
        assert (param["values"]["min"], param["values"]["max"]) == (0.01, 8.0)
        editor.set_widget("param scale_by", "name", "zoom")
        assert editor.node_id("param zoom")
        editor.shot("06-parameter", "Resize's scale_by made a parameter node (context menu), named zoom")
        editor.review()
        expect(page.get_by_test_id("ml-preview")).to_contain_text("Will publish upscale-esrgan@v4")
        expect(page.get_by_test_id("ml-param-zoom")).to_contain_text("param zoom.value")
        expect(page.get_by_test_id("ml-diff-parameters-added")).to_have_text("+ added: zoom")
        expect(page.get_by_test_id("ml-diff-parameters-removed")).to_have_text("− removed: resize")
        editor.set_widget("Resize", "upscale_method", "bicubic")  # a change after the review is not sent unseen
        page.get_by_test_id("ml-confirm").click()
        expect(page.get_by_test_id("ml-review-error")).to_contain_text("The graph changed after the review")
        editor.review()
        expect(page.get_by_test_id("ml-diff-detail-parameters-resize_method")).to_contain_text("lanczos → bicubic")
        page.get_by_test_id("ml-confirm").click()
        expect(page.get_by_test_id("ml-published")).to_contain_text("Published upscale-esrgan@v4")
        assert job_size(stack, 4, {"zoom": 0.25}) == FRAME

        # a publish with an error: the link into Upscale's image is gone; the error is shown on that node
        upscale = editor.node_id("Upscale")
        editor.js("id => { const n = app.graph.getNodeById(id); n.disconnectInput(n.findInputSlot('image')); }",
                  upscale)
        editor.review()
        expect(page.get_by_test_id("ml-review-error")).to_contain_text("required input 'image' is missing")
        expect(page.get_by_test_id(f"ml-show-node-{upscale}")).to_be_visible()
        flagged = editor.js("""id => { const n = app.graph.getNodeById(id);
                               return [Object.keys(app.lastNodeErrors ?? {}), n.inputs.find(i => i.name === 'image')
                                       .hasErrors === true, n.strokeStyles?.nodeError?.call(n)?.color ?? null]; }""",
                            upscale)
        assert flagged == [[str(upscale)], True, "red"], flagged
        page.get_by_test_id(f"ml-show-node-{upscale}").click()
        editor.shot("07-error-on-node", "a publish refused: the error drawn on the node it concerns (Upscale)")
        assert stack.api("GET", "/v1/templates/upscale-esrgan").json()["version"] == 4  # nothing stored
    finally:
        editor.close()
    key = stack.keys["publish"]
    assert not [t[:200] for t in stack.seen if key in t], "the API key came back in a response"


def test_a_new_template_built_on_the_canvas_is_published_and_runs(stack: Stack, browser: Any) -> None:
    """From an empty canvas: three core nodes placed and linked, the loader's image and the scale made parameters
    from the context menu, published as a new template with a title, and a job runs on it."""
    expect = playwright_api.expect
    editor = Editor(browser, stack)
    page = editor.page
    try:
        expect(page.get_by_test_id("ml-key")).to_be_visible()  # another browser: not signed in by the first one
        page.get_by_test_id("ml-key").fill(stack.keys["publish"])
        page.get_by_test_id("ml-signin").click()
        expect(page.get_by_test_id("ml-whoami")).to_be_visible()
        assert editor.js("() => document.cookie").find("medialab_editor") == -1  # HttpOnly: no script reads it
        editor.js("""() => { app.graph.clear();
            const load = LiteGraph.createNode('LoadImage'), scale = LiteGraph.createNode('ImageScaleBy'),
                  save = LiteGraph.createNode('SaveImage');
            const [x, y] = app.clientPosToCanvasPos([450, 400]);  // right of the panel, in view
            [load, scale, save].forEach((n, i) => { n.pos = [x + 380 * i, y]; app.graph.add(n); });
            load.title = 'Frame'; scale.title = 'Scale'; save.title = 'Result';
            load.connect(0, scale, scale.findInputSlot('image'));
            scale.connect(0, save, save.findInputSlot('images'));
            app.graph.setDirtyCanvas(true, true); }""")
        expect(page.get_by_test_id("ml-origin")).to_have_text("Not opened from a template version")
        editor.menu("Frame", "Media Lab: make a parameter", "image")  # the loader is replaced by MediaLabParamImage
        page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'MediaLabParamImage')")
        assert editor.js("() => app.graph.nodes.some(n => n.type === 'LoadImage')") is False
        editor.menu("Scale", "Media Lab: make a parameter", "scale_by")
        page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'MediaLabParamFloat')")
        page.get_by_test_id("ml-publish-name").fill("scale-from-editor")
        page.get_by_test_id("ml-publish-title").fill("Scale, made in the editor")
        editor.review()
        expect(page.get_by_test_id("ml-preview")).to_contain_text("Will publish scale-from-editor@v1 (a new template)")
        expect(page.get_by_test_id("ml-param-image")).to_contain_text("(required)")
        expect(page.get_by_test_id("ml-param-scale_by")).to_contain_text("param scale_by.value")
        editor.shot("08-new-template", "a new template built on the canvas, reviewed: image and scale_by parameters")
        page.get_by_test_id("ml-confirm").click()
        expect(page.get_by_test_id("ml-published")).to_contain_text("Published scale-from-editor@v1")
    finally:
        editor.close()
    v1 = stack.api("GET", "/v1/templates/scale-from-editor").json()
    assert v1["title"] == "Scale, made in the editor" and set(v1["params_schema"]["properties"]) == {"image",
                                                                                                        "scale_by"}
    assert job_size(stack, None, {"scale_by": 0.5}, template="scale-from-editor") == (FRAME[0] // 2, FRAME[1] // 2)
