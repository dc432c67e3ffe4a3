"""The TypeScript client (clients/ts): the committed spec and generated code match the app, it type-checks, and
it works against a real `medialab serve` (Node's own test runner, `clients/ts/test/e2e.test.ts`).

Skipped, with the reason, where Node.js, npm or the installed packages (`npm ci`, which scripts/setup.sh runs)
are missing."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.settings import PROJECT_ROOT
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.test_cli_remote import served, service_with_key

CLIENT = PROJECT_ROOT / "clients" / "ts"
GEN = CLIENT / "src" / "gen"


def node_bin(name: str) -> Path:
    """A package's command as npm installed it (in the client's own node_modules or hoisted to the root's)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("no node/npm on PATH: install Node.js 20 to build and test the TypeScript client")
    for folder in (CLIENT / "node_modules" / ".bin", PROJECT_ROOT / "node_modules" / ".bin"):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"no {name} in node_modules: run `npm ci --no-audit --no-fund` (scripts/setup.sh does)")


def run(cmd: list[str | Path], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    shown = " ".join(map(str, cmd))
    assert r.returncode == 0, f"{shown} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def export_spec() -> str:
    out = subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "python"), "scripts/openapi.py"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def diff_summary(a: dict[str, str], b: dict[str, str], a_name: str, b_name: str, lines: int = 60) -> str:
    """Which files differ between two trees ({relative path: text}), with the first lines of the diff."""
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    diff: list[str] = []
    for k in changed:
        diff += difflib.unified_diff(a[k].splitlines(), b[k].splitlines(), f"{a_name}/{k}", f"{b_name}/{k}",
                                     lineterm="", n=1)
    return (f"only in {a_name}: {only_a}\nonly in {b_name}: {only_b}\nchanged: {changed}\n"
            + "\n".join(diff[:lines]) + ("\n..." if len(diff) > lines else ""))


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_spec_and_generated_client_match_the_app(tmp_path: Path) -> None:
    """openapi.json is what scripts/openapi.py exports now, and src/gen is what the pinned generator makes of it
    (with the committed config): otherwise regenerate (see clients/ts/openapi-ts.config.mjs)."""
    generator = node_bin("openapi-ts")
    spec = export_spec()
    assert json.loads(spec)["paths"], "an empty document"
    committed = (CLIENT / "openapi.json").read_text()
    if committed != spec:
        pytest.fail("clients/ts/openapi.json is not the app's document: run `npm run generate` (it exports the "
                    "document, then regenerates src/gen)\n"
                    + diff_summary({"openapi.json": committed}, {"openapi.json": spec}, "committed", "app"))
    work = tmp_path / "client"
    work.mkdir()
    shutil.copy(CLIENT / "openapi-ts.config.mjs", work)
    (work / "openapi.json").write_text(spec)
    run([generator, "-f", "openapi-ts.config.mjs", "-s"], cwd=work)
    fresh = tree(work / "src" / "gen")
    assert "sdk.gen.ts" in fresh and "types.gen.ts" in fresh, sorted(fresh)
    current = tree(GEN)
    if current != fresh:
        pytest.fail("clients/ts/src/gen is not what the pinned generator makes of openapi.json: run `npm run "
                    "generate`\n"
                    + diff_summary(current, fresh, "committed", "regenerated"))


def test_client_and_examples_typecheck() -> None:
    """`tsc --noEmit` over src/ (generated and hand-written), examples/ and test/."""
    run([node_bin("tsc"), "--noEmit", "-p", "tsconfig.json"], cwd=CLIENT)


def compile_tests(tmp_path: Path) -> Path:
    """src/ and test/ compiled by tsc (CommonJS, tsconfig.test.json) into a temp folder; returns it."""
    build = tmp_path / "build"
    run([node_bin("tsc"), "-p", "tsconfig.test.json", "--outDir", build], cwd=CLIENT)
    return build


def test_event_streams_resume_after_a_dropped_connection(tmp_path: Path) -> None:
    """test/sse.test.ts: sse.ts against a local server that drops the stream mid-message (resumed with
    Last-Event-ID, nothing lost or repeated), a problem answer (thrown, not retried) and an abort."""
    build = compile_tests(tmp_path)
    out = run(["node", "--test", "--test-reporter=tap", build / "test" / "sse.test.js"], cwd=tmp_path, timeout=60)
    assert "# pass 2" in out and "# fail 0" in out, out


def test_node_client_against_a_real_service(tmp_path: Path, comfy_url: str) -> None:
    """test/e2e.test.ts, compiled by tsc and run by `node --test` against `medialab serve` with a real ComfyUI:
    upload, submit an upscale, its events to SUCCEEDED through sse.ts, the output; a refused parameter's
    ProblemError naming it."""
    build = compile_tests(tmp_path)
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(64, 48))
    home, key = service_with_key(tmp_path, "run", "export")
    with served(home, env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        out = run(["node", "--test", "--test-reporter=tap", build / "test" / "e2e.test.js"], cwd=tmp_path,
                  timeout=400, env={"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key, "MEDIALAB_TEST_PNG": str(frame),
                                    "MEDIALAB_TEST_MODEL": FIXTURE_MODEL})
    assert "# pass 2" in out and "# skipped 0" in out and "# fail 0" in out, out
