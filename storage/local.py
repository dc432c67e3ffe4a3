"""Local-disk backend: objects under ``root/sha256/ab/<sha256>``, written atomically."""

from __future__ import annotations

import errno
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
        """Move a written, fsynced temporary file under its key and make the rename durable too (the directory's
        fsync): from then on a row may name it, whatever crashes."""
        key = key_for(sha)
        dest = self._path(key)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        return StoredObject(key, sha, size)

    def stage_stream(self, chunks: Iterable[bytes]) -> LocalPending:
        h, size = hashlib.sha256(), 0
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return LocalPending(self, Path(name), StoredObject(key_for(h.hexdigest()), h.hexdigest(), size))

    def put_stream(self, chunks: Iterable[bytes]) -> StoredObject:
        return self.stage_stream(chunks).commit()

    def put_file(self, path: Path, sha256: str | None = None, move: bool = False) -> StoredObject:
        """``sha256``: the file's hash when the caller computed it already (it is not read twice); ``move``: the
        file is taken (renamed into the store when it is on the same file system) rather than copied."""
        if sha256 is None:
            sha, size = sha256_file(path)
        else:
            sha, size = sha256, path.stat().st_size
        if self.exists(key_for(sha)):
            return StoredObject(key_for(sha), sha, size)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        moved = False
        if move:
            try:
                os.replace(path, name)
                moved = True
            except OSError as exc:
                if exc.errno != errno.EXDEV:  # another file system: copied
                    raise
        if not moved:
            shutil.copyfile(path, name)
        _fsync_file(Path(name))
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


class LocalPending:
    """Bytes in a temporary file of the store (see ``storage.base.Pending``)."""

    def __init__(self, store: LocalDiskStore, tmp: Path, obj: StoredObject) -> None:
        self.store, self.tmp, self.obj = store, tmp, obj
        self._done = False

    def open(self) -> BinaryIO:
        return self.store.open(self.obj.key) if self._done else self.tmp.open("rb")

    def commit(self) -> StoredObject:
        if not self._done:
            _fsync_file(self.tmp)
            self.store._commit(self.tmp, self.obj.sha256, self.obj.size)
            self._done = True
        return self.obj

    def abort(self) -> None:
        if not self._done:
            self.tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
