"""The operator niceties of the CLI (typer's CliRunner, the real database under a scratch MEDIALAB_HOME): short
id prefixes, ``--json`` on list and show commands, tables that keep whole values when piped, and the last
successful health check in ``servers list``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.app import artifacts as artifact_app
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context
from orchestrator.cli import common
from orchestrator.cli.main import app
from orchestrator.db import templates as template_db
from orchestrator.db.tables import ServerRow, now
from orchestrator.settings import get_settings
from tests.conftest import png_bytes

runner = CliRunner()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    """A scratch home the CLI's commands use (their settings come from the environment)."""
    import os
    for name in [n for n in os.environ if n.startswith("MEDIALAB_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a shell, which does not export it (pytest-xdist does):
    for console in (common.console, common.err):  # rich reads it when the console is made, at import
        monkeypatch.setattr(console, "_width", None)
    monkeypatch.setenv("MEDIALAB_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    c = Context(get_settings())
    yield c
    c.db.engine.dispose()
    get_settings.cache_clear()


def medialab(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def queue(ctx: Context, n: int = 1) -> list[str]:
    with ctx.db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
        frame = artifact_app.store_input(s, ctx.store, png_bytes(8, 8), "f.png")
        return [job_app.create_job(s, row, t, {"image": frame.id, "model": "m.pth"}).id for _ in range(n)]


def test_jobs_show_and_cancel_take_the_short_id_the_cli_prints(ctx: Context) -> None:
    (job_id,) = queue(ctx)
    shown = json.loads(medialab("jobs", "show", job_id[:8], "--json"))
    assert shown["id"] == job_id and shown["state"] == "QUEUED" and shown["attempts"] == []  # the API's JobOut
    assert json.loads(medialab("jobs", "show", job_id[:8]))["job"]["id"] == job_id
    assert f"job {job_id} CANCELLED" in medialab("jobs", "cancel", job_id[:8])
    r = runner.invoke(app, ["jobs", "show", "ffffffff"])
    assert r.exit_code == 1 and "unknown job ffffffff" in r.output


def test_an_ambiguous_prefix_names_the_candidates(ctx: Context) -> None:
    from orchestrator.db.tables import Job
    with ctx.db.session() as s:  # two ids sharing their first 6 characters
        s.add_all([Job(id=f"abcdef{i}" + "0" * 25, template="upscale-esrgan", version=1, params={}) for i in (0, 1)])
        s.commit()
    r = runner.invoke(app, ["jobs", "show", "abcdef"])
    assert r.exit_code == 1 and "ambiguous" in r.output and "abcdef0" in r.output and "abcdef1" in r.output


def test_list_commands_print_json(ctx: Context) -> None:
    ids = queue(ctx, 2)
    jobs = json.loads(medialab("jobs", "list", "--json"))
    assert sorted(j["id"] for j in jobs) == sorted(ids) and {"outputs", "attempts", "created_at"} <= set(jobs[0])
    templates = json.loads(medialab("templates", "list", "--json"))
    assert {"name": "upscale-esrgan", "version": 1} in [{"name": t["name"], "version": t["version"]}
                                                          for t in templates]
    shown = json.loads(medialab("templates", "show", "upscale-esrgan", "--json"))
    assert shown["name"] == "upscale-esrgan" and "image" in shown["params_schema"]["properties"]
    assert json.loads(medialab("keys", "list", "--json")) == []
    assert json.loads(medialab("models", "list", "--json")) == []
    assert json.loads(medialab("datasets", "list", "--json")) == []
    assert json.loads(medialab("servers", "list", "--json")) == []
    medialab("keys", "create", "--role", "run", "--name", "ops")
    (key,) = json.loads(medialab("keys", "list", "--json"))
    assert key["name"] == "ops" and key["state"] == "active" and "key_hash" not in key
    trail = json.loads(medialab("audit", "--json"))
    assert trail[0]["action"] == "key.create" and set(trail[0]) == {"id", "at", "api_key_id", "key_name", "action",
                                                                   "target", "data"}
    assert "revoked" in medialab("keys", "revoke", key["id"][:6])  # a key by its id prefix too


def test_piped_tables_keep_whole_values(ctx: Context) -> None:
    ids = queue(ctx, 1)
    listed = medialab("jobs", "list")  # CliRunner: stdout is no terminal, as in `medialab jobs list | cat`
    assert ids[0] in listed and "upscale-esrgan@v2" in listed
    assert any(len(line) > 80 for line in listed.splitlines())  # one line per row, not cut to 80 columns


def test_servers_list_shows_the_last_successful_check(ctx: Context) -> None:
    with ctx.db.session() as s:
        s.add(ServerRow(name="gpu-1", url="http://127.0.0.1:9", healthy=True, last_seen=now() - timedelta(seconds=2)))
        s.add(ServerRow(name="gpu-2", url="http://127.0.0.1:10", healthy=False, last_error="connection refused",
                        last_seen=now() - timedelta(hours=3)))
        s.commit()
    listed = medialab("servers", "list")
    assert re.search(r"last ok check \ds ago", listed) and "last ok check 3h ago" in listed  # 2 s, or a few more
    rows = json.loads(medialab("servers", "list", "--json"))
    assert [(r["name"], r["healthy"]) for r in rows] == [("gpu-1", True), ("gpu-2", False)]
    assert rows[0]["last_seen"] is not None


def test_the_api_routes_take_a_prefix_too(ctx: Context) -> None:
    """The routes call the same lookups (``db/ids.py``); the event stream goes on with the full id."""
    from orchestrator.api.routes import artifacts as artifact_routes
    from orchestrator.api.routes import jobs as job_routes
    (job_id,) = queue(ctx)
    with ctx.db.session() as s:
        assert job_routes.get(job_id[:8], s, None).id == job_id  # type: ignore[arg-type]
        image = job_routes.get(job_id[:8], s, None).params["image"]  # type: ignore[arg-type]
        assert artifact_routes.get(image[:6], s, None).id == image  # type: ignore[arg-type]
        assert job_routes.cancel(job_id[:5], s, None).state == "CANCELLED"  # type: ignore[arg-type]
    events, state, full = job_routes._poll(ctx, job_id[:8], 0)
    assert full == job_id and state == "CANCELLED" and [e.state for e in events] == ["QUEUED", "CANCELLED"]


def test_jobs_watch_by_prefix_shows_the_jobs_events(ctx: Context) -> None:
    (job_id,) = queue(ctx)
    medialab("jobs", "cancel", job_id[:8])
    r = runner.invoke(app, ["jobs", "watch", job_id[:8]])
    assert r.exit_code == 1 and "QUEUED" in r.output and "cancelled while queued" in r.output  # its events, found
    assert f"job {job_id} CANCELLED" in r.output
