"""The object-store interface every backend implements."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


def key_for(sha256: str) -> str:
    """Content-addressed key: the same bytes always land on the same key, so nothing is stored twice."""
    return f"sha256/{sha256[:2]}/{sha256}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class Pending(Protocol):
    """Bytes written and hashed but perhaps not yet durable, nor visible under their key: ``open`` reads them,
    ``commit`` makes them durable and visible under ``obj.key`` (what a row may name from then on), ``abort``
    drops them. A caller may commit from another thread while it prepares the row."""

    obj: StoredObject

    def open(self) -> BinaryIO: ...

    def commit(self) -> StoredObject: ...

    def abort(self) -> None: ...


class Done:
    """A ``Pending`` of a backend whose write is durable and visible at once (an S3 PUT)."""

    def __init__(self, store: ObjectStore, obj: StoredObject) -> None:
        self.store, self.obj = store, obj

    def open(self) -> BinaryIO:
        return self.store.open(self.obj.key)

    def commit(self) -> StoredObject:
        return self.obj

    def abort(self) -> None:
        pass


class ObjectStore(Protocol):
    bucket: str | None  # the bucket ComfyUI servers can reach directly; None for local disk

    def put_stream(self, chunks: Iterable[bytes]) -> StoredObject:
        """Store bytes as they arrive (never all in memory); returns the content-addressed object, durable."""

    def stage_stream(self, chunks: Iterable[bytes]) -> Pending:
        """Write bytes as they arrive; durable and visible under their key only once ``commit`` returns."""

    def put_file(self, path: Path, sha256: str | None = None, move: bool = False) -> StoredObject:
        """Store a local file (``sha256``: its hash, when the caller knows it already; ``move``: the file is the
        caller's own temporary copy, which the store may take instead of copying it)."""

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The object's size, or None when it is not stored."""

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """A path on this machine when the backend has one (local disk), else None."""

    def presigned_get(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str | None:
        """A time-limited URL anyone can GET the object from, when the backend has such URLs."""
