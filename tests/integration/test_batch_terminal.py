"""`medialab batch` as a person sees it: run in a real pseudo-terminal (pexpect) against a service
(`medialab serve`) in another process. The live display's counts by state and N/M column while a batch runs,
ending with the summary and the manifest's path; Ctrl-C leaving the batch running (exit 130, saying how to
watch or cancel it); `batch cancel`, `retry` and `watch` on a batch that nothing dispatches; unknown ids."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.test_cli_remote import medialab, served, service_with_key

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
ROWS, COLS = 40, 200


def plain(text: str) -> str:
    """Terminal output as text: escape sequences (colours, cursor moves, hide/show cursor) removed, each
    carriage return a line break (rich redraws its live display in place)."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


class Terminal:
    """The CLI in a pseudo-terminal of ROWS x COLS with TERM set, as a user starts it from a shell."""

    def __init__(self, home: Path, *args: str, env: dict[str, str]) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_") and k != "COLUMNS"}
        full.update(env, MEDIALAB_HOME=str(home), TERM="xterm-256color")
        self.raw = ""
        self.child = pexpect.spawn(sys.executable, ["-m", "orchestrator", *args], cwd=str(home.parent), env=full,
                                   encoding="utf-8", codec_errors="replace", dimensions=(ROWS, COLS), timeout=5)

    @property
    def text(self) -> str:
        return plain(self.raw)

    def until(self, pattern: str, timeout: float = 180) -> re.Match[str]:
        """Read until the plain text matches ``pattern``; fails with what was shown when it does not in time."""
        deadline = time.monotonic() + timeout
        while True:
            if m := re.search(pattern, self.text):
                return m
            assert time.monotonic() < deadline, f"{pattern!r} not shown in {timeout}s:\n{self.text}"
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                m = re.search(pattern, self.text)
                assert m, f"{pattern!r} not shown before the command ended:\n{self.text}"
                return m

    def end(self, timeout: float = 180) -> int:
        """Read to the end; the exit status."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.raw += self.child.before
        self.child.close()
        assert self.child.exitstatus is not None, f"ended by signal {self.child.signalstatus}:\n{self.text}"
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def shots(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"s{i}.png").write_bytes(png_bytes(32 + 8 * i, 24, (i, 2, 3)))
    return folder


def final_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_the_live_display_in_a_terminal_shows_counts_and_ends_with_the_manifest(tmp_path: Path,
                                                                                comfy_url: str) -> None:
    home, key = service_with_key(tmp_path, "run", "export")
    operator = tmp_path / "operator" / ".medialab"
    operator.parent.mkdir()
    folder = shots(tmp_path / "shots", 4)
    out = tmp_path / "out"
    with served(home, env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
        term = Terminal(operator, "batch", "run", "upscale-esrgan", str(folder), "--set", f"model={FIXTURE_MODEL}",
                        "--out", str(out), env=env)
        try:
            batch = term.until(rf"batch (\w{{32}}) on {re.escape(url)}: 4 job\(s\) queued, 0 already done").group(1)
            prefix = batch[:8]
            # a frame while it runs: counts by state with numbers, fewer than 4 of 4 done
            live = term.until(rf"batch {prefix} ((?:QUEUED|RUNNING|SUCCEEDED) \d+ ?)+ .*\b([0-3])/4\b")
            assert re.search(r"(QUEUED|RUNNING) [1-4]", live.group(0)), live.group(0)
            status = term.end()
        finally:
            term.kill()
        text = term.text
        assert status == 0, text
        assert re.search(rf"batch {prefix} SUCCEEDED 4 .*\b4/4\b.*jobs/min", text), text
        lines = final_lines(text)
        manifest = (out / "manifest.jsonl").resolve()
        assert lines[-2:] == [f"batch {batch}: 4 SUCCEEDED", f"manifest: {manifest}"], lines[-4:]
        assert len(manifest.read_text().splitlines()) == 4
        assert "Traceback" not in text

        started = time.monotonic()  # watching a finished batch: its summary at once
        watched = medialab(operator, "batch", "watch", prefix, env=env, timeout=60)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert final_lines(watched.stdout)[-1] == f"batch {batch}: 4 SUCCEEDED", watched.stdout
        assert time.monotonic() - started < 30  # Python's start and the imports; no polling


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory, comfy_url: str) -> Iterator[tuple[str, str, Path, Path]]:
    """A service served with --no-dispatch (its batches stay QUEUED): its URL, a key, an operator's home and a
    folder of 4 pngs."""
    root = tmp_path_factory.mktemp("paused")
    home, key = service_with_key(root, "run", "export")
    operator = root / "operator" / ".medialab"
    operator.parent.mkdir()
    folder = shots(root / "shots", 4)
    with served(home, "--no-dispatch", env={"MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}) as url:
        assert httpx.get(f"{url}/healthz").json()["dispatching"] is False
        yield url, key, operator, folder


def test_ctrl_c_stops_watching_and_leaves_the_batch_running(paused: tuple[str, str, Path, Path]) -> None:
    url, key, operator, folder = paused
    env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
    term = Terminal(operator, "batch", "run", "upscale-esrgan", str(folder), "--set", f"model={FIXTURE_MODEL}",
                    "--grid", "resize=0.5", env=env)
    try:
        batch = term.until(r"batch (\w{32}) on \S+: 4 job\(s\) queued").group(1)
        term.until(rf"batch {batch[:8]} QUEUED 4 .*\b0/4\b")
        term.child.sendintr()
        status = term.end(60)
    finally:
        term.kill()
    text = term.text
    assert status == 130, text
    assert f"warning: nothing dispatches jobs on {url} (served with --no-dispatch)" in text, text  # said at once
    assert f"stopped watching; batch {batch} keeps running on {url}." in text, text
    assert f"watch it:  medialab batch watch {batch}" in text and f"cancel it: medialab batch cancel {batch}" in text
    assert "Traceback" not in text and "Aborted" not in text
    shown = httpx.get(f"{url}/v1/batches/{batch}", headers={"X-API-Key": key}).json()
    assert shown["counts"] == {"QUEUED": 4} and not shown["cancel_requested"] and not shown["finished"]

    watch = Terminal(operator, "batch", "watch", batch[:8], env=env)  # the same from `watch`
    try:
        watch.until(rf"batch {batch[:8]} QUEUED 4 .*\b0/4\b")
        watch.child.sendintr()
        assert watch.end(60) == 130, watch.text
    finally:
        watch.kill()
    assert f"stopped watching; batch {batch} keeps running" in watch.text, watch.text
    assert httpx.get(f"{url}/v1/batches/{batch}", headers={"X-API-Key": key}).json()["counts"] == {"QUEUED": 4}


def test_cancel_retry_and_watch_a_batch_from_the_cli(paused: tuple[str, str, Path, Path]) -> None:
    url, key, operator, folder = paused
    env = {"MEDIALAB_URL": url, "MEDIALAB_API_KEY": key}
    headers = {"X-API-Key": key}
    r = medialab(operator, "batch", "run", "upscale-esrgan", str(folder), "--set", f"model={FIXTURE_MODEL}",
                 "--grid", "resize=0.25", "--no-watch", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    batch = re.search(r"batch (\w{32}) on \S+: 4 job\(s\) queued", r.stdout).group(1)
    assert f"watch it: medialab batch watch {batch}" in r.stdout
    prefix = batch[:8]

    def states() -> list[str]:
        return sorted(j["state"] for j in httpx.get(f"{url}/v1/batches/{batch}/jobs", headers=headers).json())

    cancelled = medialab(operator, "batch", "cancel", prefix, env=env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert cancelled.stdout.strip() == f"cancelled batch {batch}: 4 CANCELLED"
    assert states() == ["CANCELLED"] * 4
    again = medialab(operator, "batch", "cancel", prefix, env=env)
    assert again.returncode == 1 and f"error: batch {batch} is already cancelled" in again.stderr, again.stderr

    retried = medialab(operator, "batch", "retry", prefix, env=env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert retried.stdout.strip() == f"retried batch {batch}: 4 CANCELLED, 4 QUEUED"
    assert states() == ["CANCELLED"] * 4 + ["QUEUED"] * 4
    shown = httpx.get(f"{url}/v1/batches/{batch}", headers=headers).json()
    assert shown["counts"] == {"CANCELLED": 4, "QUEUED": 4} and not shown["finished"]
    nothing = medialab(operator, "batch", "retry", batch, env=env)
    assert nothing.returncode == 1, nothing.stdout + nothing.stderr
    assert f"error: batch {batch} has no failed or cancelled item to retry" in nothing.stderr

    assert medialab(operator, "batch", "cancel", batch, env=env).returncode == 0  # finished: all 8 CANCELLED
    started = time.monotonic()
    watched = medialab(operator, "batch", "watch", prefix, env=env, timeout=60)
    assert watched.returncode == 1, watched.stdout + watched.stderr  # not all succeeded, as `batch run` says
    assert final_lines(watched.stdout)[-1] == f"batch {batch}: 8 CANCELLED", watched.stdout
    assert time.monotonic() - started < 30

    for command in ("watch", "cancel", "retry", "show"):
        bad = medialab(operator, "batch", command, "0badbadbad", env=env, timeout=60)
        assert bad.returncode == 1, (command, bad.stdout, bad.stderr)
        assert bad.stderr.strip() == "error: unknown batch 0badbadbad", (command, bad.stderr)
        assert "Traceback" not in bad.stderr and not bad.stdout.strip()
