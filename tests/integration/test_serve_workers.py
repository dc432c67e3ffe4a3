"""``medialab serve --workers 2`` on PostgreSQL: two uvicorn worker processes, each the whole app, answer one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from orchestrator.app import keys as key_app
from orchestrator.comfy.worker import stop_group
from orchestrator.db.engine import Database
from tests.conftest import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_two_workers_answers_from_both(pg_url: str, comfy_url: str, templates_dir: Path,
                                                  tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALAB_")} | {
        "MEDIALAB_HOME": str(tmp_path / "home"), "MEDIALAB_DATABASE_URL": pg_url,
        "MEDIALAB_TEMPLATES_DIR": str(templates_dir), "MEDIALAB_COMFY_SERVERS": json.dumps([comfy_url])}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from orchestrator.cli.main import app; app()", "serve",
                                 "--port", str(port), "--workers", "2", "--no-dispatch"], cwd=PROJECT_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert health.json() == {"status": "ok", "dispatching": False}
        db = Database(pg_url)
        with db.session() as s:
            _row, key = key_app.create_key(s, "ci", ["run"])
        db.engine.dispose()
        deadline = time.monotonic() + 60
        while log.read_text().count("Application startup complete") < 2:  # both workers up (each a Context)
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        pids = {line.split("[")[1].split("]")[0] for line in log.read_text().splitlines()
                if "Started server process" in line}
        assert len(pids) == 2, log.read_text()
        for _ in range(20):  # a new connection each time, answered by either process
            r = httpx.get(f"{base}/v1/jobs", headers={"X-API-Key": key}, timeout=30)
            assert r.status_code == 200, r.text
    finally:
        stop_group(proc, signal.SIGINT, timeout=60)
    assert "Traceback" not in log.read_text(), log.read_text()
