"""The studio in a real browser: headless Debian chromium (Playwright, no downloaded browser) against a real
`medialab serve` in its own process, with a real ComfyUI worker and the built studio (studio/dist).

One service and one browser for the module. A run key signs in, upscales an uploaded frame from Create, sees
the result (4x the input), opens its lineage and finds it in the gallery, without a download button (and a
direct GET of /content is 403); an export key downloads it (the file's sha256 is the artifact's). Pool,
Training (a dataset and a queued training, seeded through the API), Templates and Batches (a small batch) render
real data; /docs renders offline. An artifact's page links down the chain (what was made from it). The gallery
over 10,000 rows (seeded into the service's database) asks for one page per request, pages to a far page and
loads thumbnails lazily. A deep link survives a reload; an unknown route shows the not-found view. Any page
error or console error fails the test. A screenshot of each page is saved under .runtime/screenshots/studio/
(listed in index.txt there)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact, new_id
from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.test_cli_remote import medialab, served

playwright_api = pytest.importorskip("playwright.sync_api", reason="the PyPI package playwright is not installed "
                                     "(pip install -e '.[dev]')")

CHROMIUM = Path("/usr/bin/chromium")
STUDIO_DIST = PROJECT_ROOT / "studio" / "dist"
SCREENSHOTS = PROJECT_ROOT / ".runtime" / "screenshots" / "studio"
BASE_CHECKPOINT = "tiny_sd15.safetensors"  # the fixture checkpoint the ComfyUI worker lists
FRAME = (64, 48)  # the uploaded frame; the fixture ESRGAN model makes it 256x192
TIMEOUT_MS = 60_000


@dataclass
class Studio:
    """The running service: its URL, one key per role, the frame to upload, what the tests found."""

    url: str
    home: Path  # the service's MEDIALAB_HOME (its SQLite database is home/medialab.db)
    keys: dict[str, str]
    frame: Path
    server: dict[str, Any]
    seeded: dict[str, Any] = field(default_factory=dict)
    shots: dict[str, str] = field(default_factory=dict)  # screenshot path -> what it shows

    def headers(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}

    def get(self, path: str, role: str = "run") -> Any:
        r = httpx.get(f"{self.url}{path}", headers=self.headers(role), timeout=30)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def post(self, path: str, body: dict[str, Any], role: str = "run") -> Any:
        r = httpx.post(f"{self.url}{path}", headers=self.headers(role), json=body, timeout=60)
        assert r.status_code in (200, 201), f"POST {path}: {r.status_code} {r.text}"
        return r.json()


def requirements() -> None:
    """Skip (the reason is printed: addopts has -rs) when the build or the browser is missing."""
    if not (STUDIO_DIST / "index.html").is_file():
        pytest.skip(f"no studio build at {STUDIO_DIST}: run scripts/setup.sh (npm run build)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (sudo apt-get install chromium; scripts/setup.sh "
                    "does it as root)")


def create_key(home: Path, role: str) -> str:
    created = medialab(home, "keys", "create", "--role", role, "--name", f"studio-{role}")
    assert created.returncode == 0, created.stdout + created.stderr
    match = re.search(r"(mlk_\S+)", created.stdout)
    assert match, created.stdout
    return match.group(1)


def service_home(root: Path, *roles: str) -> tuple[Path, dict[str, str]]:
    """A service's home under root (``medialab init``) and a key per role."""
    home = root / "service" / ".medialab"
    home.parent.mkdir()
    init = medialab(home, "init")
    assert init.returncode == 0, init.stdout + init.stderr
    return home, {role: create_key(home, role) for role in roles}


def pool_ready(url: str, key: str) -> dict[str, Any]:
    """The service's one pool server once it is healthy with the fixture model (its row)."""
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as client:
        for _ in range(300):
            rows = client.get("/v1/servers").json()
            if rows and rows[0]["healthy"] and FIXTURE_MODEL in rows[0]["models"].get("upscale_models", []):
                return rows[0]
            time.sleep(0.2)
    raise AssertionError(f"the pool never reported a server healthy with {FIXTURE_MODEL}: {rows}")


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Studio]:
    requirements()  # before a ComfyUI server is started for nothing
    comfy_url: str = request.getfixturevalue("comfy_url")
    root = tmp_path_factory.mktemp("studio-browser")
    home, keys = service_home(root, "run", "export")
    frame = root / "frame.png"
    frame.write_bytes(png_bytes(*FRAME))
    env = {"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url]), "MEDIALAB_LOCAL_TRAINER": "false",
           "MEDIALAB_STUDIO_DIR": str(STUDIO_DIST)}
    with served(home, env=env) as url:
        # the pool probed (health and models) before a page asks for the model pickers
        server = pool_ready(url, keys["run"])
        yield Studio(url=url, home=home, keys=keys, frame=frame, server=server)


@pytest.fixture(scope="module")
def browser(studio: Studio) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


class Watched:
    """A page of its own browser context (its own sessionStorage: one signed-in key), collecting every page
    error and console error."""

    def __init__(self, browser: Any, studio: Studio) -> None:
        self.studio = studio
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console error: {m.text} ({m.location})")
                     if m.type == "error" else None)

    def sign_in(self, role: str, shot: str | None = None) -> None:
        page = self.page
        page.goto(f"{self.studio.url}/studio/")
        playwright_api.expect(page.get_by_test_id("signin-form")).to_be_visible()
        if shot:
            self.shot("signin", shot)
        page.get_by_test_id("signin-key").fill(self.studio.keys[role])
        page.get_by_test_id("signin-button").click()
        playwright_api.expect(page.get_by_test_id("whoami")).to_be_visible()

    def shot(self, name: str, what: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        self.studio.shots[str(path.relative_to(PROJECT_ROOT))] = what

    def close(self) -> None:
        self.context.close()
        assert not self.errors, "errors in the browser:\n" + "\n".join(self.errors)


@pytest.fixture
def watched(browser: Any, studio: Studio) -> Iterator[Any]:
    """Makes Watched pages; each is closed, and its errors checked, at the end of the test."""
    made: list[Watched] = []

    def make() -> Watched:
        made.append(Watched(browser, studio))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture(scope="module", autouse=True)
def screenshot_index(studio: Studio) -> Iterator[None]:
    """After the module: every screenshot's path and what it shows, printed and in index.txt."""
    yield
    index_screenshots(studio.shots, SCREENSHOTS, "studio")


def index_screenshots(shots: dict[str, str], folder: Path, label: str) -> None:
    """Every screenshot's path and what it shows, printed and written to index.txt in their folder."""
    if shots:
        lines = [f"{path}: {what}" for path, what in sorted(shots.items())]
        (folder / "index.txt").write_text("\n".join(lines) + "\n")
        print(f"\n{label} screenshots:\n  " + "\n  ".join(lines))


def natural_size(page: Any, test_id: str) -> tuple[int, int]:
    """The decoded picture's size (not its size on the page), once it has loaded."""
    handle = page.get_by_test_id(test_id).first
    handle.evaluate("img => img.decode()")
    return tuple(handle.evaluate("img => [img.naturalWidth, img.naturalHeight]"))  # type: ignore[return-value]


def test_upscale_from_create_lineage_gallery_and_download(studio: Studio, watched: Any) -> None:
    expect = playwright_api.expect
    run = watched()
    page = run.page
    run.sign_in("run", shot="the sign-in page (an API key, kept for this tab only)")

    # Create: the template, an uploaded frame, the fixture model from the pool's pickers; submit and watch it
    page.get_by_test_id("template-select").select_option("upscale-esrgan")
    page.get_by_test_id("file-input").set_input_files(str(studio.frame))
    expect(page.get_by_test_id("input-id-image")).to_have_text(re.compile(r"\w{32}"))
    uploaded = page.get_by_test_id("input-id-image").inner_text().strip()
    page.get_by_test_id("param-model").select_option(FIXTURE_MODEL)
    page.get_by_test_id("submit-button").click()
    expect(page.get_by_test_id("job-view")).to_be_visible()
    expect(page.get_by_test_id("job-state")).to_have_text("SUCCEEDED", timeout=180_000)
    expect(page.get_by_test_id("result-image")).to_be_visible()
    expect(page.get_by_test_id("before-after")).to_be_visible()
    output = page.get_by_test_id("result-image").get_attribute("data-artifact")
    assert output and output != uploaded
    w, h = FRAME
    assert natural_size(page, "input-image") == (w, h)
    assert natural_size(page, "result-image") == (4 * w, 4 * h)  # the fixture ESRGAN model enlarges 4x
    run.shot("create", f"Create: upscale-esrgan of an uploaded {w}x{h} frame, SUCCEEDED, before/after "
             f"({4 * w}x{4 * h} result)")

    art = studio.get(f"/v1/artifacts/{output}")
    assert art["input_artifacts"] == [uploaded] and (art["width"], art["height"]) == (4 * w, 4 * h)
    assert art["template_hash"] and art["server"] == studio.server["url"] and art["comfy_version"]

    # "send to another template": the output becomes the chosen template's input; then back to the result
    page.get_by_test_id("send-to-select").select_option("upscale-esrgan")
    page.get_by_test_id("send-to-button").click()
    expect(page.get_by_test_id("input-id-image")).to_have_text(output)
    page.go_back()

    # its lineage: template version and hash, server, ComfyUI version, the input
    page.get_by_test_id("result-lineage-link").click()
    expect(page.get_by_test_id("lineage-panel")).to_be_visible()
    expect(page.get_by_test_id("lineage-template")).to_have_text(f"upscale-esrgan v{art['template_version']}")
    expect(page.get_by_test_id("lineage-template-hash")).to_have_text(art["template_hash"])
    expect(page.get_by_test_id("lineage-server")).to_have_text(studio.server["url"])
    expect(page.get_by_test_id("lineage-comfy")).to_have_text(art["comfy_version"])
    expect(page.get_by_test_id("lineage-inputs")).to_contain_text(uploaded)
    expect(page.get_by_test_id("lineage-params")).to_contain_text(FIXTURE_MODEL)
    expect(page.get_by_test_id("lineage-children-none")).to_be_visible()  # nothing made from the output yet
    expect(page.get_by_test_id("download-button")).to_have_count(0)  # a run key: no download offered
    artifact_url = page.url
    assert artifact_url.endswith(f"/studio/artifacts/{output}")
    run.shot("artifact", "an output's page with a run key: preview and lineage (template version + hash, "
             "server, ComfyUI version, inputs, parameters), no download button")

    # down the chain: the input's page links to what was made from it, the output
    page.get_by_test_id("lineage-inputs").get_by_role("link", name=uploaded).click()
    children = page.get_by_test_id("lineage-children")
    expect(children).to_be_visible()
    expect(children.locator("a")).to_have_count(1)
    expect(children.locator(f'a[href$="/artifacts/{output}"]')).to_be_visible()
    run.shot("artifact-input", "the uploaded frame's page: its lineage lists 'Made from this' (the upscale)")
    children.locator("a").click()
    expect(page).to_have_url(artifact_url)

    # the gallery has it (a thumbnail from the service's previews)
    page.get_by_test_id("nav-gallery").click()
    item = page.locator(f'[data-testid="gallery-item"][data-artifact="{output}"]')
    expect(item).to_be_visible()
    expect(item.locator("img")).to_be_visible()
    run.shot("gallery", "the gallery with a run key: the upscale's output and its input as thumbnails")

    # the server refuses what the page does not offer
    refused = httpx.get(f"{studio.url}/v1/artifacts/{output}/content", headers=studio.headers("run"))
    assert refused.status_code == 403, refused.text

    # an export key (in a context of its own): download, the bytes are the artifact's
    export = watched()
    export.sign_in("export")
    expect(export.page.get_by_test_id("nav-create")).to_have_count(0)  # export only: nothing to run
    export.page.goto(artifact_url)
    expect(export.page.get_by_test_id("lineage-panel")).to_be_visible()
    with export.page.expect_download() as download:
        export.page.get_by_test_id("download-button").click()
    data = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"]
    export.shot("download", "an output's page with an export key: the download button (the file downloaded "
                "has the artifact's sha256)")

    export.page.goto(f"{studio.url}/docs")  # the API reference, served offline from the studio's build
    expect(export.page.locator(".swagger-ui .info")).to_be_visible()
    export.shot("docs", "/docs: Swagger UI from the studio build (no CDN)")


def noise_png(seed: int, w: int = 64, h: int = 64) -> bytes:
    """A picture unlike any other seed's (a dataset refuses look-alikes)."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), bytes(rnd.randrange(256) for _ in range(w * h * 3))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeded(studio: Studio) -> dict[str, Any]:
    """Real rows for the other pages, through the API: a dataset and a training run queued on it (no trainer
    claims it here), and a batch of two upscales that has finished."""
    ids = []
    for i in range(5):  # a dataset needs at least 5 pictures
        r = httpx.post(f"{studio.url}/v1/artifacts", headers=studio.headers("run"), timeout=30,
                       files={"file": (f"actor{i}.png", noise_png(i))})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    dataset = studio.post("/v1/datasets", {"name": "studio-actor", "trigger": "mlchar", "images": ids,
                                           "caption_template": "photo of {trigger}", "resolution": 64})
    training = studio.post("/v1/trainings", {"dataset": dataset["id"], "base": BASE_CHECKPOINT,
                                             "preset": "sd15-character", "trigger": "mlchar",
                                             "set": {"resolution": 64}})
    batch = studio.post("/v1/batches", {"label": "studio-check", "template": "upscale-esrgan", "inputs": ids[:2],
                                        "input_param": "image", "params": {"model": FIXTURE_MODEL}})
    for _ in range(600):
        done = studio.get(f"/v1/batches/{batch['id']}")
        if done["finished"]:
            break
        time.sleep(0.3)
    assert done["finished"] and done["counts"].get("SUCCEEDED") == 2, done
    return {"dataset": dataset, "training": training, "batch": batch}


def test_pool_training_templates_and_batches_render_real_data(studio: Studio, seeded: dict[str, Any],
                                                                watched: Any) -> None:
    expect = playwright_api.expect
    w = watched()
    page = w.page
    w.sign_in("run")

    page.get_by_test_id("nav-pool").click()
    card = page.locator(f'[data-testid="server-card"][data-server="{studio.server["name"]}"]')
    expect(card).to_be_visible()
    expect(card.get_by_test_id("server-health")).to_have_text("healthy")
    expect(card).to_contain_text(studio.server["url"])
    expect(card.get_by_test_id("server-models")).to_contain_text(FIXTURE_MODEL)
    w.shot("pool", "Pool: the real ComfyUI worker (name, URL, healthy, ComfyUI version, models) and the queue "
           "(the training run waiting for a trainer)")

    page.get_by_test_id("nav-training").click()
    expect(page.get_by_test_id("training-page")).to_be_visible()
    run_row = page.get_by_test_id("training-run")
    expect(run_row).to_have_count(1)
    expect(run_row).to_contain_text("QUEUED")
    expect(run_row).to_contain_text(seeded["dataset"]["id"])
    expect(run_row).to_contain_text(BASE_CHECKPOINT)
    expect(page.get_by_test_id("datasets-table")).to_contain_text(seeded["dataset"]["filename"])
    expect(page.get_by_test_id("model-registry")).to_be_visible()
    w.shot("training", "Training: the queued run, the dataset built through the API, the (empty) model registry")

    page.get_by_test_id("nav-templates").click()
    expect(page.get_by_test_id("templates-page")).to_be_visible()
    templates = studio.get("/v1/templates")
    expect(page.get_by_test_id("template-row")).to_have_count(len(templates))
    expect(page.get_by_test_id("template-row").locator("td:first-child")).to_have_text(
        [t["name"] for t in templates])
    w.shot("templates", "Templates: every template with its latest version")

    page.get_by_test_id("nav-batches").click()
    row = page.get_by_test_id("batch-row").filter(has_text="studio-check")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("upscale-esrgan")
    w.shot("batches", "Batches: the two-item upscale batch, finished")
    row.locator("a").first.click()
    expect(page.get_by_test_id("batch-page")).to_be_visible()
    expect(page.get_by_test_id("batch-output")).to_have_count(2)
    w.shot("batch", "one batch: its progress, its two outputs and its jobs")


def test_the_watcher_fails_on_page_and_console_errors(browser: Any, studio: Studio) -> None:
    """The error collection the tests above rely on sees an uncaught exception and a console error."""
    w = Watched(browser, studio)
    w.page.goto(f"{studio.url}/studio/")
    w.page.evaluate("console.error('probe: console'); setTimeout(() => { throw new Error('probe: thrown'); })")
    w.page.wait_for_timeout(300)
    assert any("probe: console" in e for e in w.errors) and any("probe: thrown" in e for e in w.errors), w.errors
    with pytest.raises(AssertionError, match="errors in the browser"):
        w.close()


# -- the gallery at 10,000 rows --------------------------------------------------------------------------
SEEDED_ROWS = 10_000
MAX_LIST_LIMIT = 100  # what one gallery request may ask for at most (its page is 60)


@pytest.fixture(scope="module")
def many(studio: Studio) -> dict[str, Any]:
    """10,000 artifact rows written into the running service's SQLite with the project's own Database and
    tables (as studio/dev/seed_artifacts.py does), reusing three uploaded pictures' keys and sha256 so their
    previews work; older than everything else, so the other tests' rows stay on the gallery's first page."""
    sources = []
    for i in range(3):
        r = httpx.post(f"{studio.url}/v1/artifacts", headers=studio.headers("run"), timeout=30,
                       files={"file": (f"many{i}.png", noise_png(100 + i, 48, 48))})
        assert r.status_code == 201, r.text
        sources.append(r.json())
    db = Database(f"sqlite:///{(studio.home / 'medialab.db').resolve()}")
    oldest = datetime.now(UTC) - timedelta(days=30)
    started = time.monotonic()
    with db.session() as s:
        rows = [s.get(Artifact, src["id"]) for src in sources]
        for i in range(SEEDED_ROWS):
            src = rows[i % len(rows)]
            assert src is not None
            fields = src.model_dump(exclude={"id", "origin", "created_at", "filename"})
            s.add(Artifact(**fields, id=new_id(), origin=f"seed:{i}", filename=f"seed-{i:05d}.png",
                           created_at=oldest - timedelta(seconds=i)))
        s.commit()
    db.engine.dispose()
    total = SEEDED_ROWS + len(studio.get(f"/v1/artifacts?limit=500&offset={SEEDED_ROWS}"))  # far fewer than 500 real
    assert total >= SEEDED_ROWS
    return {"sources": sources, "total": total, "seconds": time.monotonic() - started}


def list_requests(urls: list[str]) -> list[dict[str, list[str]]]:
    """The query of every GET /v1/artifacts (the list, not one artifact) among the page's requests."""
    return [parse_qs(u.query) for u in map(urlsplit, urls) if u.path == "/v1/artifacts"]


def test_gallery_with_10000_artifacts_pages_and_loads_thumbnails_lazily(studio: Studio, many: dict[str, Any],
                                                                        watched: Any) -> None:
    expect = playwright_api.expect
    w = watched()
    page = w.page
    page.set_viewport_size({"width": 1100, "height": 760})
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    w.sign_in("run")
    previews = lambda: [u for u in urls if re.search(r"/v1/artifacts/[^/]+/preview", u)]  # noqa: E731

    page.get_by_test_id("nav-gallery").click()
    items = page.get_by_test_id("gallery-item")
    expect(items).to_have_count(60)
    expect(items.first.locator("img")).to_be_visible()
    page.wait_for_load_state("networkidle")
    first = len(previews())
    assert 0 < first < 60, f"{first} previews asked for a page of 60: thumbnails are not lazy"

    # scrolling brings the rest in (they are lazy, not broken)
    items.last.scroll_into_view_if_needed()
    expect(items.last.locator("img")).to_be_visible()
    assert len(previews()) > first

    # a far page from the URL's state (offset 9,000), then Next
    page.goto(f"{studio.url}/studio/gallery?page=150")
    expect(page.get_by_test_id("page-number")).to_have_text(re.compile(r"^page 151\b"))
    far = studio.get("/v1/artifacts?limit=60&offset=9000")
    expect(items).to_have_count(60)
    expect(items.first).to_have_attribute("data-artifact", far[0]["id"])
    expect(items.first.locator("img")).to_be_visible()  # the seeded rows' previews are the sources' pictures
    page.get_by_test_id("page-next").click()
    expect(page.get_by_test_id("page-number")).to_have_text(re.compile(r"^page 152\b"))
    expect(items.first).to_have_attribute("data-artifact", studio.get("/v1/artifacts?limit=1&offset=9060")[0]["id"])
    expect(page).to_have_url(re.compile(r"[?&]page=151\b"))

    # the last page: what is left, and no Next
    last = (many["total"] - 1) // 60
    page.goto(f"{studio.url}/studio/gallery?page={last}")
    expect(items).to_have_count(many["total"] - last * 60)
    expect(page.get_by_test_id("page-next")).to_be_disabled()
    w.shot("gallery-10000", f"the gallery over {many['total']} artifacts ({SEEDED_ROWS} rows seeded in "
           f"{many['seconds']:.1f}s): its last page (page {last + 1}); one page per request, {first} previews "
           "asked for the first page of 60 before scrolling")

    listed = list_requests(urls)
    offsets = {int(q.get("offset", ["0"])[0]) for q in listed}
    assert {0, 9000, 9060, last * 60} <= offsets, offsets
    too_big = [q for q in listed if int(q.get("limit", ["50"])[0]) > MAX_LIST_LIMIT]
    assert not too_big, f"gallery requests over one page: {too_big}"


# -- deep links ------------------------------------------------------------------------------------------
def test_a_deep_link_survives_a_reload_and_an_unknown_route_is_not_found(studio: Studio, many: dict[str, Any],
                                                                          watched: Any) -> None:
    expect = playwright_api.expect
    art = many["sources"][0]
    link = f"{studio.url}/studio/artifacts/{art['id']}"
    w = watched()
    page = w.page
    w.sign_in("run")
    key = page.evaluate("() => sessionStorage.getItem('medialab.apiKey')")
    assert key == studio.keys["run"]

    # a new page (a new tab: sessionStorage is per tab) opened straight on the deep link: sign in, land there
    tab = w.context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.on("pageerror", lambda e: w.errors.append(f"pageerror: {e}"))
    tab.goto(link)
    expect(tab.get_by_test_id("signin-form")).to_be_visible()
    tab.get_by_test_id("signin-key").fill(studio.keys["run"])
    tab.get_by_test_id("signin-button").click()
    expect(tab).to_have_url(link)
    expect(tab.get_by_test_id("artifact-page")).to_contain_text(art["filename"])

    # reload: still signed in (the key is in this tab's sessionStorage), the page renders again
    for p in (tab, page):
        if p is page:
            p.goto(link)  # the first tab, signed in already, straight on the link
        p.reload()
        expect(p.get_by_test_id("whoami")).to_be_visible()
        expect(p.get_by_test_id("signin-form")).to_have_count(0)
        expect(p.get_by_test_id("lineage-panel")).to_contain_text(art["id"])
    w.page = tab
    w.shot("deep-link", "an artifact's page opened from its URL in a new tab, signed in, then reloaded")
    w.page = page

    # an unknown route under /studio: the app's not-found view, not a blank page
    page.goto(f"{studio.url}/studio/no/such/page")
    expect(page.get_by_test_id("not-found")).to_be_visible()
    expect(page.get_by_test_id("not-found-path")).to_have_text("/no/such/page")
    expect(page.get_by_test_id("whoami")).to_be_visible()
    w.shot("not-found", "an unknown route under /studio: the not-found view")
    tab.close()
