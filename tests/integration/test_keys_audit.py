"""API keys and the audit trail through the real API (a real ComfyUI in the pool, no dispatcher) and the CLI
in a subprocess."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, update
from sqlmodel import Session, col

from orchestrator.db.engine import Database
from orchestrator.db.tables import ApiKey, LoraModel, TemplateVersionRow, now
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api
from tests.integration.test_cli import medialab
from tests.integration.test_jobs_api import submit, upload
from tests.integration.test_training import OPTIONS, build_dataset
from tests.unit.test_publish import GRAPH

KEY_FIELDS = {"id", "name", "roles", "state", "created_at", "created_by", "expires_at", "last_used_at", "revoked_at"}


def new_key(api: Api, name: str, roles: list[str], **extra: Any) -> dict[str, Any]:
    r = api.client.post("/v1/keys", headers=api.admin, json={"name": name, "roles": roles, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def as_key(created: dict[str, Any]) -> dict[str, str]:
    return {"X-API-Key": created["key"]}


def set_key(api: Api, key_id: str, **values: Any) -> None:
    with api.client.app.state.ctx.db.session() as s:
        s.execute(update(ApiKey).where(col(ApiKey.id) == key_id).values(**values))
        s.commit()


def test_key_lifecycle_create_use_expire_rotate_revoke(api_paused: Api) -> None:
    api = api_paused
    ci = new_key(api, "ci", ["run", "export"], expires="1h")
    assert set(ci) == KEY_FIELDS | {"key"} and ci["key"].startswith("mlk_") and ci["state"] == "active"
    admin_id = api.client.get("/v1/keys/test-admin", headers=api.admin).json()["id"]
    assert ci["created_by"] == admin_id and ci["roles"] == ["export", "run"] and ci["expires_at"]

    assert api.client.get("/v1/jobs", headers=as_key(ci)).status_code == 200  # use it
    listed = api.client.get("/v1/keys", headers=api.admin)
    assert listed.status_code == 200
    mine = next(k for k in listed.json() if k["id"] == ci["id"])
    assert set(mine) == KEY_FIELDS and mine["last_used_at"] is not None  # shown, but never the key or its hash
    with api.client.app.state.ctx.db.session() as s:
        key_hash = s.get(ApiKey, ci["id"]).key_hash
    assert ci["key"] not in listed.text and key_hash not in listed.text and "key_hash" not in listed.text

    set_key(api, ci["id"], expires_at=now() - timedelta(seconds=1))  # expire it
    r = api.client.get("/v1/jobs", headers=as_key(ci))
    assert r.status_code == 401 and "API key 'ci' expired at" in r.json()["detail"]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert api.client.get(f"/v1/keys/{ci['id']}", headers=api.admin).json()["state"] == "expired"

    runner = new_key(api, "runner", ["run"], expires="30d")
    r = api.client.post("/v1/keys/runner/rotate", headers=api.admin)  # by name, no body
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["id"] != runner["id"] and rotated["key"] != runner["key"]
    assert (rotated["name"], rotated["roles"], rotated["expires_at"]) == ("runner", ["run"], runner["expires_at"])
    assert rotated["previous"]["id"] == runner["id"] and rotated["previous"]["state"] == "revoked"
    assert "key" not in rotated["previous"]
    assert api.client.get("/v1/jobs", headers=as_key(runner)).status_code == 401  # the old key
    assert api.client.post("/v1/jobs", headers=as_key(rotated), json={"template": "nope"}).status_code == 404

    graceful = api.client.post(f"/v1/keys/{rotated['id']}/rotate", headers=api.admin,
                               json={"grace": "1h", "expires": "never"}).json()
    assert graceful["previous"]["state"] == "revoking" and graceful["expires_at"] is None
    assert api.client.get("/v1/jobs", headers=as_key(rotated)).status_code == 200  # still, for an hour
    assert api.client.get("/v1/jobs", headers=as_key(graceful)).status_code == 200

    r = api.client.post(f"/v1/keys/{graceful['id']}/revoke", headers=api.admin)
    assert r.status_code == 200 and r.json()["state"] == "revoked" and "key" not in r.json()
    assert api.client.get("/v1/jobs", headers=as_key(graceful)).status_code == 401
    again = api.client.post(f"/v1/keys/{graceful['id']}/revoke", headers=api.admin)
    assert again.status_code == 409 and "revoked already" in again.json()["detail"]

    last = api.client.post("/v1/keys/test-admin/revoke", headers=api.admin)
    assert last.status_code == 409 and "last admin key" in last.json()["detail"]
    assert api.client.get("/v1/keys", headers=api.admin).status_code == 200  # the admin key still works
    active = {k["name"] for k in api.client.get("/v1/keys", headers=api.admin).json()}
    everything = {k["name"] for k in api.client.get("/v1/keys?include_revoked=true", headers=api.admin).json()}
    assert "runner" in active and {"ci", "runner"} <= everything and "ci" in active  # expired, not revoked

    for body, detail in (({"name": "x", "roles": ["wizard"]}, "unknown role"),
                         ({"name": "x", "roles": ["run"], "expires": "2020-01-01"}, "in the past"),
                         ({"name": "x" * 200, "roles": ["run"]}, "max_name_length=128"),
                         ({"name": "a b", "roles": ["run"]}, "key name")):
        r = api.client.post("/v1/keys", headers=api.admin, json=body)
        assert r.status_code == 422 and detail in r.json()["detail"], r.text
    assert api.client.post("/v1/keys/nobody/revoke", headers=api.admin).status_code == 404


def test_every_keys_and_audit_route_is_admin_only(api_paused: Api) -> None:
    api = api_paused
    others = {role: as_key(new_key(api, f"only-{role}", [role])) for role in ("run", "publish", "export", "train")}
    target = new_key(api, "target", ["run"])["id"]
    routes = [(method, path) for path, item in api.client.app.openapi()["paths"].items()
              if path.startswith(("/v1/keys", "/v1/audit")) for method in item]
    assert len(routes) == 6  # list, create, show, revoke, rotate, audit: a new route is checked here too
    for method, path in routes:
        url = path.replace("{ref}", target)
        for role, headers in others.items():
            r = api.client.request(method, url, headers=headers, json={"name": "x", "roles": ["admin"]})
            assert r.status_code == 403, (role, method, path, r.text)
        assert api.client.request(method, url).status_code == 401
    assert api.client.get(f"/v1/keys/{target}", headers=api.admin).json()["state"] == "active"  # untouched


def test_every_audited_action_appears_once_with_its_key(api_paused: Api, comfy_pair: list[str]) -> None:
    api = api_paused
    ctx = api.client.app.state.ctx
    artist = new_key(api, "artist", ["publish"])
    frame = upload(api, png_bytes(32, 24))
    job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.run).status_code == 200
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.run).status_code == 409  # no change: no row

    published = api.client.post("/v1/templates/scaler/versions", headers=as_key(artist), json={"graph": GRAPH})
    assert published.status_code == 201, published.text
    assert api.client.post("/v1/templates/scaler/versions/1/deprecate", headers=as_key(artist)).status_code == 200

    dataset = build_dataset(api)
    training = api.client.post("/v1/trainings", headers=api.run, json={
        "dataset": dataset["id"], "base": "tiny_sd15.safetensors", "preset": "sd15-character", "trigger": "mlchar",
        "set": OPTIONS})
    assert training.status_code == 201, training.text

    lora = upload(api, b"not really a LoRA", "hero.safetensors")
    with ctx.db.session() as s:
        s.add(LoraModel(sha256="ab" * 32, name="hero", version=1, filename="hero-v1.safetensors",
                        artifact_id=lora["id"]))
        s.commit()
    assert api.client.post("/v1/models/hero@v1/withdraw", headers=as_key(artist)).status_code == 200
    assert api.client.post("/v1/models/hero@v1/approve", headers=as_key(artist)).status_code == 200

    spare = upload(api, png_bytes(8, 8, (1, 2, 3)))
    assert api.client.delete(f"/v1/artifacts/{spare['id']}", headers=api.admin).status_code == 200

    url = comfy_pair[1]
    added = api.client.post("/v1/servers", headers=api.admin, json={"url": url, "name": "second"})
    assert added.status_code == 201, added.text
    for verb in ("drain", "activate", "refresh"):
        assert api.client.post(f"/v1/servers/second/{verb}", headers=api.admin).status_code == 200, verb
    assert api.client.delete("/v1/servers/second", headers=api.admin).status_code == 200

    rotated = api.client.post("/v1/keys/artist/rotate", headers=api.admin).json()
    assert api.client.post(f"/v1/keys/{rotated['id']}/revoke", headers=api.admin).status_code == 200

    r = api.client.get("/v1/audit?limit=500", headers=api.admin)
    assert r.status_code == 200
    rows = [e for e in r.json() if e["api_key_id"] is not None]  # without: the pool's servers from settings
    admin_id = api.client.get("/v1/keys/test-admin", headers=api.admin).json()["id"]
    assert {e["key_name"] for e in rows} == {"test-admin", "test-run", "artist"}
    seen = Counter((e["action"], e["key_name"], e["target"]) for e in rows)
    expected = {
        ("key.create", "test-admin", artist["id"]): 1,
        ("job.submit", "test-run", job_id): 1, ("job.cancel", "test-run", job_id): 1,
        ("template.publish", "artist", "scaler@v1"): 1, ("template.deprecate", "artist", "scaler@v1"): 1,
        ("job.submit", "test-run", training.json()["id"]): 1,
        ("model.withdraw", "artist", "hero-v1.safetensors"): 1, ("model.approve", "artist", "hero-v1.safetensors"): 1,
        ("artifact.delete", "test-admin", spare["id"]): 1,
        ("server.add", "test-admin", "second"): 1, ("server.drain", "test-admin", "second"): 1,
        ("server.activate", "test-admin", "second"): 1, ("server.refresh", "test-admin", "second"): 1,
        ("server.remove", "test-admin", "second"): 1,
        ("key.rotate", "test-admin", artist["id"]): 1, ("key.revoke", "test-admin", rotated["id"]): 1,
    }
    assert dict(seen) == expected
    assert all(e["api_key_id"] == admin_id for e in rows if e["key_name"] == "test-admin")
    assert artist["key"] not in r.text and rotated["key"] not in r.text and "mlk_" not in r.text  # no secret

    def query(**params: str) -> list[tuple[str, str]]:
        got = api.client.get("/v1/audit", headers=api.admin, params=params)
        assert got.status_code == 200, got.text
        return [(e["action"], e["target"]) for e in got.json()]

    assert query(action="job", key="test-run") == [("job.submit", training.json()["id"]), ("job.cancel", job_id),
                                                   ("job.submit", job_id)]  # newest first
    assert query(target="second", action="server.drain") == [("server.drain", "second")]
    assert query(key="artist", action="template") == [("template.deprecate", "scaler@v1"),
                                                      ("template.publish", "scaler@v1")]
    assert query(since="2999-01-01") == [] and len(query(since="1h", limit="3")) == 3
    assert Counter(a for a, _t in query(key="@cli")) == {"server.add": 1, "key.create": 3}  # set-up: the pool's
    # server from the settings, make_api's keys
    for bad in ({"limit": "501"}, {"offset": str(2**63)}, {"since": "yesterday"}):
        got = api.client.get("/v1/audit", headers=api.admin, params=bad)
        assert got.status_code == 422, (bad, got.text)


def test_a_rolled_back_change_leaves_no_audit_row(api_paused: Api) -> None:
    """Another publish takes the version number between our read and our commit: ours is rolled back (409),
    and so is its audit row."""
    api = api_paused
    db = api.client.app.state.ctx.db
    raced: list[bool] = []

    def collide(session: Session, _ctx: object, _instances: object) -> None:
        if not raced and any(isinstance(o, TemplateVersionRow) and o.name == "racy" for o in session.new):
            raced.append(True)
            with db.session() as other:
                other.add(TemplateVersionRow(name="racy", version=1, content_hash="x", title="t", kind="image",
                                             manifest={}, graph={}, source="published"))
                other.commit()

    event.listen(Session, "before_flush", collide)
    try:
        r = api.client.post("/v1/templates/racy/versions", headers=api.admin, json={"graph": GRAPH})
    finally:
        event.remove(Session, "before_flush", collide)
    assert raced == [True]
    assert r.status_code == 409 and "published by someone else" in r.json()["detail"]
    assert api.client.get("/v1/audit?action=template", headers=api.admin).json() == []
    ok = api.client.post("/v1/templates/racy/versions", headers=api.admin, json={"graph": GRAPH})
    assert ok.status_code == 201, ok.text  # the same change, committed this time: audited once
    assert [e["target"] for e in api.client.get("/v1/audit?action=template", headers=api.admin).json()] == [
        "racy@v2"]


def test_keys_and_audit_from_the_cli(tmp_path: Path) -> None:
    home = tmp_path / ".medialab"
    assert medialab(home, "init").returncode == 0

    def run(*args: str) -> str:
        r = medialab(home, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    created = run("keys", "create", "--role", "run", "--name", "ci", "--expires", "1h")
    plain = created.split(": ")[-1].strip()
    assert plain.startswith("mlk_") and " expires " in created
    rotated = run("keys", "rotate", "ci", "--grace", "1h")
    new_plain = rotated.split(": ")[-1].strip()
    assert new_plain.startswith("mlk_") and new_plain != plain and "revoked at" in rotated

    db = Database(f"sqlite:///{(home / 'medialab.db').resolve()}")
    with db.session() as s:
        s.execute(update(ApiKey).where(col(ApiKey.name) == "ci", col(ApiKey.revoked_at).is_(None))
                  .values(expires_at=now() - timedelta(seconds=1)))
        s.commit()
    db.engine.dispose()
    listed = run("keys", "list", "--all", "--json")
    keys = json.loads(listed)
    assert [(k["name"], k["state"]) for k in keys] == [("admin", "active"), ("ci", "revoking"), ("ci", "expired")]
    assert all(set(k) == KEY_FIELDS for k in keys) and plain not in listed and new_plain not in listed
    assert "revoked" in run("keys", "revoke", keys[1]["id"])

    trail = json.loads(run("audit", "--key", "@cli", "--since", "1h", "--json"))
    assert [(e["action"], e["api_key_id"]) for e in trail] == [
        ("key.revoke", None), ("key.rotate", None), ("key.create", None), ("key.create", None)]
    assert trail[1]["target"] == keys[1]["id"] and trail[1]["data"]["new_key"] == keys[2]["id"]
    assert plain not in json.dumps(trail) and new_plain not in json.dumps(trail)
