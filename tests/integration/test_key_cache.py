"""The API's key cache (``api/guard.py`` ``KeyCache``, ``key_cache_s``): a revoke through the API is refused at
once; one written by another process (the CLI, a worker, a replica) within ``key_cache_s``; expiry at once."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col

from orchestrator.app import keys as key_app
from orchestrator.db.engine import Database
from orchestrator.db.tables import ApiKey, now
from orchestrator.settings import Settings
from tests.integration.conftest import Api, make_api


def test_a_key_revoked_through_the_api_is_refused_at_once(api_paused: Api) -> None:
    client = api_paused.client
    assert client.get("/v1/jobs", headers=api_paused.run).status_code == 200  # read, and now cached
    assert client.get("/v1/jobs", headers=api_paused.run).status_code == 200
    assert client.post("/v1/keys/test-run/revoke", headers=api_paused.admin).status_code == 200
    r = client.get("/v1/jobs", headers=api_paused.run)
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]


def revoke_elsewhere(settings: Settings, name: str, expires_in_s: float | None = None) -> None:
    """As the CLI on the host would: its own engine (its own process), so no cache of the API's hears of it.
    With ``expires_in_s``: the key's expiry is set instead."""
    other = Database(settings.database)
    try:
        with other.session() as s:
            if expires_in_s is None:
                key_app.revoke_key(s, name)
            else:
                s.execute(update(ApiKey).where(col(ApiKey.name) == name)
                          .values(expires_at=now() + timedelta(seconds=expires_in_s)))
                s.commit()
    finally:
        other.engine.dispose()


def test_a_key_revoked_by_another_process_is_refused_within_key_cache_s(settings: Settings, comfy_url: str) -> None:
    settings.comfy_servers = [comfy_url]
    settings.key_cache_s = 0.5
    with make_api(settings, dispatch=False) as api:
        assert api.client.get("/v1/jobs", headers=api.run).status_code == 200  # cached from here
        revoke_elsewhere(settings, "test-run")
        time.sleep(settings.key_cache_s + 0.2)
        r = api.client.get("/v1/jobs", headers=api.run)
        assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
        assert api.client.get("/v1/jobs", headers=api.admin).status_code == 200


def test_a_cached_key_is_refused_once_it_expires(settings: Settings, comfy_url: str) -> None:
    settings.comfy_servers = [comfy_url]
    settings.key_cache_s = 60  # the row stays cached throughout: its expiry is checked on every request
    with make_api(settings, dispatch=False) as api:
        revoke_elsewhere(settings, "test-export", expires_in_s=1.0)
        assert api.client.get("/v1/jobs", headers=api.reader).status_code == 200  # read, with its expiry
        time.sleep(1.2)
        r = api.client.get("/v1/jobs", headers=api.reader)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
