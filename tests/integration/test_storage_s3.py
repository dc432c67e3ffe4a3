"""The MinIO/S3 backend against a real S3-protocol server (moto), and jobs whose bytes live there."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from orchestrator.settings import Settings
from storage import MinioStore, StorageUnavailable, key_for
from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api, make_api
from tests.integration.test_jobs_api import submit, upload, wait
from tests.integration.test_pool import _events, attempts_of, running_on, wait_until
from tests.s3 import S3Server


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


def store_for(s3: S3Server, **kw: object) -> MinioStore:
    return MinioStore(s3.endpoint, s3.access_key, s3.secret_key, bucket="unit", **kw)


def test_store_roundtrip_dedupe_ranges_presigned(s3: S3Server, tmp_path) -> None:  # noqa: ANN001
    store = store_for(s3, spool_dir=tmp_path, part_size=5 * 1024 * 1024)
    big = [bytes([i]) * (1 << 20) for i in range(12)]  # 12 MiB: a multipart upload
    obj = store.put_stream(iter(big))
    assert obj.size == 12 << 20 and obj.key == key_for(obj.sha256)
    assert store.put_stream(iter(big)) == obj  # same bytes: same key, not uploaded twice
    with store.open(obj.key, offset=(5 << 20) + 10, length=4) as f:
        assert f.read() == bytes([5]) * 4
    assert httpx.get(store.presigned_get(obj.key, filename="x.bin")).content[:3] == b"\x00\x00\x00"
    assert store.size("sha256/00/missing") is None
    with pytest.raises(FileNotFoundError):
        store.open("sha256/00/missing")
    assert not list(tmp_path.iterdir())  # no spool file left behind


def test_unreachable_store_says_so(s3: S3Server) -> None:
    store = store_for(s3, attempts=2, backoff_s=0.05)
    s3.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.put_stream([b"x"])
    assert time.monotonic() - started < 15


@pytest.fixture
def s3_api(s3: S3Server, settings: Settings, comfy_url: str) -> Iterator[Api]:
    for name, value in s3.settings().items():
        setattr(settings, name, value)
    settings.comfy_servers = [comfy_url]
    with make_api(settings, dispatch=True) as api:
        yield api


def test_upscale_with_inputs_and_outputs_in_s3(s3_api: Api, s3: S3Server) -> None:
    api = s3_api
    frame = upload(api, png_bytes(80, 60))
    job = wait(api, submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()["id"])
    assert job["state"] == "SUCCEEDED", job["error"]
    (out,) = job["outputs"]
    store = api.client.app.state.ctx.store
    with store.open(key_for(out["sha256"])) as f, Image.open(io.BytesIO(f.read())) as im:
        assert im.size == (320, 240)
    assert store.size(key_for(frame["sha256"])) == frame["size"]
    content = api.client.get(f"/v1/artifacts/{out['id']}/content", headers=api.reader)
    assert content.status_code == 200 and len(content.content) == out["size"]


def test_store_outage_during_ingest_waits_and_stores_once(s3_api: Api, s3: S3Server, comfy_url: str) -> None:
    api = s3_api
    frame = upload(api, png_bytes(512, 512, (30, 30, 160)))  # ~4 s on the CPU
    job = submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()
    attempt = wait_until(lambda: attempts_of(api, job["id"]), what="dispatched")[0]
    wait_until(lambda: running_on(comfy_url, attempt["id"]), what="prompt running")
    s3.stop()  # the object store goes away while ComfyUI works
    wait_until(lambda: any("object store unreachable" in e["reason"] for e in _events(api, job["id"])),
               timeout=60, what="ingest waiting for the store")
    s3.start()  # back (empty: moto keeps nothing); the bucket is created again
    final = wait(api, job["id"], timeout=120)
    assert final["state"] == "SUCCEEDED", final["error"]
    assert [a["state"] for a in final["attempts"]] == ["SUCCEEDED"]  # the GPU work was not run again
    (out,) = final["outputs"]
    assert api.client.app.state.ctx.store.size(key_for(out["sha256"])) == out["size"]


def test_artifacts_api_urls_listing_tags_and_deletion(s3_api: Api) -> None:
    api = s3_api
    r = api.client.post("/v1/artifacts", headers=api.run, data={"tags": "actor-a, frames"},
                        files={"file": ("a.png", png_bytes(40, 30, (1, 1, 1)))})
    frame = r.json()
    assert sorted(frame["tags"]) == ["actor-a", "frames"]
    spare = upload(api, png_bytes(20, 20, (2, 2, 2)))
    job = wait(api, submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()["id"])
    (out,) = job["outputs"]
    url = api.client.get(f"/v1/artifacts/{out['id']}/url", headers=api.reader).json()
    assert url["presigned"] and httpx.get(url["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    listed = api.client.get("/v1/artifacts", params={"tag": "actor-a"}, headers=api.reader).json()
    assert [a["id"] for a in listed] == [frame["id"]]
    by_job = api.client.get("/v1/artifacts", params={"job": job["id"]}, headers=api.reader).json()
    assert [a["id"] for a in by_job] == [out["id"]]
    by_template = api.client.get("/v1/artifacts", params={"template": "upscale-esrgan", "role": "output"},
                                 headers=api.reader).json()
    assert [a["id"] for a in by_template] == [out["id"]]
    assert api.client.delete(f"/v1/artifacts/{spare['id']}", headers=api.run).status_code == 403
    r = api.client.delete(f"/v1/artifacts/{frame['id']}", headers=api.admin)
    assert r.status_code == 409 and job["id"] in r.json()["detail"]  # the job's input stays
    assert api.client.delete(f"/v1/artifacts/{spare['id']}", headers=api.admin).status_code == 200
    assert api.client.get(f"/v1/artifacts/{spare['id']}", headers=api.reader).status_code == 404
    assert api.client.app.state.ctx.store.size(key_for(spare["sha256"])) is None
    assert api.client.delete(f"/v1/artifacts/{out['id']}", headers=api.admin).status_code == 200
