"""Local-disk backend: objects under ``root/sha256/ab/<sha256>``, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from storage.base import StoredObject, key_for, sha256_file


class LocalDiskStore:
    bucket: str | None = None  # not an object store ComfyUI servers can reach

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or not key.startswith("sha256/"):
            raise ValueError(f"bad object key {key!r}")
        return path

    def _commit(self, tmp: Path, sha: str, size: int) -> StoredObject:
        key = key_for(sha)
        dest = self._path(key)
        if dest.exists():
            tmp.unlink()
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        return StoredObject(key, sha, size)

    def put_stream(self, chunks: Iterable[bytes]) -> StoredObject:
        h, size = hashlib.sha256(), 0
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return self._commit(Path(name), h.hexdigest(), size)

    def put_file(self, path: Path, sha256: str | None = None) -> StoredObject:
        """``sha256``: the file's hash when the caller computed it already (it is not read twice)."""
        if sha256 is None:
            sha, size = sha256_file(path)
        else:
            sha, size = sha256, path.stat().st_size
        if self.exists(key_for(sha)):
            return StoredObject(key_for(sha), sha, size)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        shutil.copyfile(path, name)
        return self._commit(Path(name), sha, size)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.exists() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_get(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str | None:
        return None  # served by the API (GET /v1/artifacts/{id}/content)
