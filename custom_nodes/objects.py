"""Object storage as the node pack sees it: the server's own credentials from its environment.

MEDIALAB_S3_ENDPOINT (host:port), MEDIALAB_S3_ACCESS_KEY, MEDIALAB_S3_SECRET_KEY, MEDIALAB_S3_BUCKET
(default medialab), MEDIALAB_S3_SECURE (1/true for https). Keys are content-addressed exactly like the
orchestrator's: ``sha256/<first two hex>/<sha256>``. A source is exactly such a key or an http(s) URL that
the URL rule (``urls.py``: allowlist from MEDIALAB_URL_ALLOWLIST, the store's own endpoint always) allows.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import urls

T = TypeVar("T")


class ObjectError(Exception):
    pass


def config() -> dict[str, Any] | None:
    endpoint = os.environ.get("MEDIALAB_S3_ENDPOINT")
    if not endpoint:
        return None
    return {"endpoint": endpoint, "bucket": os.environ.get("MEDIALAB_S3_BUCKET", "medialab"),
            "secure": os.environ.get("MEDIALAB_S3_SECURE", "").lower() in ("1", "true", "yes")}


def _client():  # noqa: ANN202
    import urllib3
    from minio import Minio

    cfg = config()
    if cfg is None:
        raise ObjectError("this ComfyUI server has no object storage configured (MEDIALAB_S3_ENDPOINT)")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=120), retries=urllib3.Retry(total=0))
    return Minio(cfg["endpoint"], access_key=os.environ.get("MEDIALAB_S3_ACCESS_KEY"),
                 secret_key=os.environ.get("MEDIALAB_S3_SECRET_KEY"), secure=cfg["secure"],
                 http_client=http), cfg["bucket"]


def _patiently(what: str, fn: Callable[[], T]) -> T:
    """Retry while the store is unreachable (backoff up to 30 s) for MEDIALAB_S3_WAIT_S (600 s): an
    outage of the store delays the job instead of failing work that already ran on the GPU."""
    import urllib3
    from minio.error import S3Error

    deadline = time.monotonic() + float(os.environ.get("MEDIALAB_S3_WAIT_S", "600"))
    delay = 0.5
    while True:
        try:
            return fn()
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise
            client, bucket = _client()
            try:
                client.make_bucket(bucket)
            except S3Error as again:
                if again.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            continue
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if time.monotonic() + delay > deadline:
                raise ObjectError(f"object store unreachable for {what}: {exc}") from exc
            print(f"[medialab] object store unreachable ({exc}); retrying {what} in {delay:.0f}s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def key_for(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


def fetch(source: str, dest: Path, max_bytes: int, policy: urls.UrlPolicy | None = None) -> Path:
    """Download an object (by key, or by an http(s) URL the URL rule allows, such as a presigned one) to
    ``dest``, refusing more than ``max_bytes``."""
    if urls.is_url(source):
        try:
            urls.fetch_to_file(source, dest, policy or urls.UrlPolicy.from_env(), max_bytes)
        except (urls.UrlRefused, urls.FetchError) as exc:
            raise ObjectError(str(exc)) from exc
        return dest
    if not urls.is_object_key(source):
        raise ObjectError(f"{source[:80]!r} is neither an object key (sha256/<2 hex>/<64 hex>) nor an http(s) URL")
    client, bucket = _client()
    size = _patiently(f"reading {source}", lambda: client.stat_object(bucket, source).size)
    if size > max_bytes:
        raise ObjectError(f"object {source}: {size} bytes is over the limit of {max_bytes}")

    def download() -> None:
        response = client.get_object(bucket, source)
        try:
            _copy_capped(response, dest, max_bytes, source)
        finally:
            response.close()
            response.release_conn()

    _patiently(f"reading {source}", download)
    return dest


def _copy_capped(src: Any, dest: Path, max_bytes: int, what: str) -> None:
    total = 0
    with dest.open("wb") as f:
        while chunk := src.read(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise ObjectError(f"{what}: more than the limit of {max_bytes} bytes")
            f.write(chunk)


def store(path: Path) -> dict[str, Any]:
    """Upload a file under its content-addressed key (skipped when already there); returns key, sha, size."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    sha, size = h.hexdigest(), path.stat().st_size
    key = key_for(sha)
    client, bucket = _client()

    def upload() -> None:
        from minio.error import S3Error

        try:
            if client.stat_object(bucket, key).size == size:
                return  # stored already: content-addressed
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                raise
        client.fput_object(bucket, key, str(path), part_size=max(8 << 20, -(-size // 9000)),
                           metadata={"sha256": sha})

    _patiently(f"storing {key}", upload)
    return {"key": key, "sha256": sha, "size": size}


def local_name(source: str) -> str:
    """A file name for a source that cannot leave its folder: a key's sha256, else a hash of the whole URL
    (never a name the URL chose: a foreign URL ending in a sha256 must not pass for that stored object), with
    a short, plain suffix kept."""
    if urls.is_object_key(source):
        return source.rsplit("/", 1)[-1]
    last = source.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    _stem, dot, ext = last.rpartition(".")
    suffix = f".{ext.lower()}" if dot and re.fullmatch(r"[A-Za-z0-9]{1,8}", ext) else ""
    return "url-" + hashlib.sha256(source.encode()).hexdigest()[:40] + suffix


def temp_path(suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="medialab-", suffix=suffix)
    os.close(fd)
    return Path(name)


def move_into(src: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    shutil.move(str(src), dest)
    return dest
