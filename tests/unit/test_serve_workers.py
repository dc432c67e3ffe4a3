"""``medialab serve --workers N``: several API processes need PostgreSQL and a pool of registered servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import common
from orchestrator.cli.main import app
from orchestrator.settings import get_settings

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("MEDIALAB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDIALAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    for console in (common.console, common.err):
        monkeypatch.setattr(console, "_width", None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_serve_workers_refuses_sqlite(env: None, tmp_path: Path) -> None:
    r = runner.invoke(app, ["serve", "--workers", "2"])
    assert r.exit_code == 1, r.output
    assert "--workers 2 needs PostgreSQL" in r.output and "--workers 1" in r.output
    assert not (tmp_path / "home" / "medialab.db").exists()  # refused before anything was opened


def test_serve_workers_refuses_a_pool_without_servers(env: None, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIALAB_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    r = runner.invoke(app, ["serve", "--workers", "2"])
    assert r.exit_code == 1, r.output
    assert "needs ComfyUI servers in the pool" in r.output


def test_serve_workers_must_be_positive(env: None) -> None:
    assert runner.invoke(app, ["serve", "--workers", "0"]).exit_code == 2
