"""MinIO / S3 backend (the ``minio`` SDK): content-addressed objects in one bucket.

Bytes never sit in memory whole: a stream is spooled to a temporary file while it is hashed (the key
is its sha256, known only at the end), then uploaded in multipart chunks; reads stream in chunks, with
ranges. An object that is already there (same key, same size) is not uploaded again. Transient errors
(connection refused or reset, 5xx) are retried with backoff; when the store stays unreachable,
``StorageUnavailable`` says so and the caller decides (the executor waits and retries an ingest).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from storage.base import Done, StoredObject, key_for, sha256_file

T = TypeVar("T")
NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}


class StorageUnavailable(Exception):
    """The object store did not answer (after retries)."""


class StorageError(Exception):
    """The object store answered with an error that retrying will not fix."""


class _Reader:
    """A streamed object body as a binary file object (read, iterate, close)."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._r = response

    def read(self, n: int = -1) -> bytes:
        return self._r.read(None if n is None or n < 0 else n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._r.close()
        self._r.release_conn()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MinioStore:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str = "medialab",
                 secure: bool = False, region: str | None = None, spool_dir: Path | None = None,
                 part_size: int = 8 * 1024 * 1024, attempts: int = 4, backoff_s: float = 0.5) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.part_size = part_size
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.spool_dir = spool_dir
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), maxsize=16,
                                   retries=urllib3.Retry(total=0))  # retries are ours, around whole calls
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                            http_client=http)
        self._bucket_ready = False

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run one SDK call, re-creating a vanished bucket and retrying transient failures with backoff."""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                if not self._bucket_ready:
                    self.ensure_bucket()
                return fn()
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    self._bucket_ready = False
                elif exc.code in ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"):
                    pass
                else:
                    raise
                last: Exception = exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last = exc
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        raise StorageUnavailable(f"object store {self.endpoint} unreachable: {last}") from last

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (bootstrap)."""
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        self._bucket_ready = True

    def _size(self, key: str) -> int | None:
        try:
            return self._call(lambda: self.client.stat_object(self.bucket, key)).size
        except S3Error as exc:
            if exc.code in NOT_FOUND:
                return None
            raise StorageError(f"stat {key}: {exc}") from exc

    # -- the ObjectStore interface ---------------------------------------------------------------------
    def put_file(self, path: Path, sha256: str | None = None, move: bool = False) -> StoredObject:
        if sha256 is None:
            sha256, size = sha256_file(path)
        else:
            size = path.stat().st_size
        key = key_for(sha256)
        if self._size(key) != size:
            part = max(self.part_size, -(-size // 9000))  # S3 allows 10,000 parts: bigger parts for huge files
            self._call(lambda: self.client.fput_object(self.bucket, key, str(path), part_size=part,
                                                       metadata={"sha256": sha256}))
            stored = self._size(key)
            if stored != size:
                raise StorageError(f"object {key} has {stored} bytes after upload, expected {size}")
        return StoredObject(key, sha256, size)

    def put_stream(self, chunks: Iterable[bytes]) -> StoredObject:
        h = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="medialab-spool-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
            return self.put_file(Path(name), h.hexdigest())
        finally:
            Path(name).unlink(missing_ok=True)

    def stage_stream(self, chunks: Iterable[bytes]) -> Done:
        return Done(self, self.put_stream(chunks))  # an S3 PUT is durable once answered

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        try:
            response = self._call(lambda: self.client.get_object(self.bucket, key, offset=offset,
                                                                 length=length or 0))
        except S3Error as exc:
            raise (FileNotFoundError(key) if exc.code in NOT_FOUND else StorageError(f"get {key}: {exc}")) from exc
        return _Reader(response)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        return self._size(key) is not None

    def size(self, key: str) -> int | None:
        return self._size(key)

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_get(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str:
        headers = {"response-content-disposition": f'attachment; filename="{filename}"'} if filename else None
        return self.client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s),
                                                response_headers=headers)

    def delete(self, key: str) -> None:
        self._call(lambda: self.client.remove_object(self.bucket, key))
