from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.app import keys as key_app
from orchestrator.settings import Settings


@dataclass
class Api:
    client: TestClient
    admin: dict[str, str]
    run: dict[str, str]
    reader: dict[str, str]  # a valid key without the run role


@contextmanager
def make_api(settings: Settings, dispatch: bool) -> Iterator[Api]:
    app = create_app(settings, dispatch=dispatch)
    with TestClient(app) as client:
        headers = {}
        with app.state.ctx.db.session() as s:
            for role in ("admin", "run", "export"):
                _row, key = key_app.create_key(s, f"test-{role}", [role])
                headers[role] = {"X-API-Key": key}
        yield Api(client, headers["admin"], headers["run"], headers["export"])


@pytest.fixture
def api(settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API with a dispatcher on one real ComfyUI server."""
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        yield api


@pytest.fixture
def api_paused(settings: Settings, comfy_url: str) -> Iterator[Api]:
    """The API with no dispatcher: submitted jobs stay QUEUED."""
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=False) as api:
        yield api
