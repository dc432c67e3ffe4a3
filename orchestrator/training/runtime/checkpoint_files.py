"""A diffusers-folder base checkpoint carried to a trainer: packed as a tar stream, unpacked into its cache.

The orchestrator serves a folder base (``GET /v1/trainer/checkpoints/{name}``) as an uncompressed tar built on
the fly from ``folder_members``: regular files and folders only, in a stable order, with the exact length
known up front. A link inside the folder is served as the file it names only when that file is inside the
folder too; a link out of it, a link to a folder and anything that is no plain file or folder refuse the base
(at submit, and when it is asked for). The trainer unpacks it with ``unpack_folder`` into a sibling
``<name>.part`` folder, then moves it in place: a folder in the cache is a complete one.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from orchestrator.core.errors import InvalidInput

MEDIA_TYPE = "application/x-tar"
KIND_HEADER = "X-MediaLab-Checkpoint"  # "folder" on a tar of a folder base
BLOCK = 512
CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One entry of the tar: its header, and the file whose bytes follow it (None for a folder)."""

    info: tarfile.TarInfo
    header: bytes
    path: Path | None


def _member(name: str, path: Path | None, st: os.stat_result) -> Member:
    info = tarfile.TarInfo(name)
    info.mtime = int(st.st_mtime)
    if path is None:
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, st.st_size
    return Member(info, info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), path)


def folder_members(folder: Path, name: str) -> list[Member]:
    """The entries of a folder base, checked: InvalidInput names the first one that cannot be served."""
    root = folder.resolve()
    members: list[Member] = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed, never followed
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = Path(dirpath) / entry
            rel = path.relative_to(root).as_posix()
            where = f"base checkpoint {name!r}: {rel}"
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise InvalidInput(f"{where} is a link out of the folder (to {target}); only what is inside the "
                                       "folder is served: copy it in without links (cp -rL)")
                if target.is_dir():
                    raise InvalidInput(f"{where} is a link to a folder; copy the folder in without links (cp -rL)")
            try:
                st = path.stat()
            except OSError as exc:
                raise InvalidInput(f"{where} cannot be read: {exc.strerror}") from exc
            if stat.S_ISDIR(st.st_mode) and not path.is_symlink():
                members.append(_member(rel, None, st))
            elif stat.S_ISREG(st.st_mode):
                members.append(_member(rel, path, st))
            else:
                raise InvalidInput(f"{where} is neither a file nor a folder")
    return members


def _padding(size: int) -> int:
    return -size % BLOCK


def tar_size(members: Iterable[Member]) -> int:
    """The exact length of ``tar_stream(members)``."""
    return sum(len(m.header) + m.info.size + _padding(m.info.size) for m in members) + 2 * BLOCK


def tar_stream(members: Iterable[Member], chunk: int = CHUNK) -> Iterator[bytes]:
    """The tar, piece by piece (a 2 GB U-Net is never held whole). A file that shrank since it was listed
    ends the stream with an error: the trainer sees a short download, never a wrong file."""
    for m in members:
        yield m.header
        if m.path is None:
            continue
        left = m.info.size
        with m.path.open("rb") as f:
            while left:
                data = f.read(min(chunk, left))
                if not data:
                    raise OSError(f"{m.path} shrank while it was sent")
                left -= len(data)
                yield data
        if pad := _padding(m.info.size):
            yield b"\0" * pad
    yield b"\0" * (2 * BLOCK)


class IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings (an HTTP body, ``tar_stream``)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and "\0" not in name


def unpack_folder(stream: BinaryIO, dest: Path) -> Path:
    """Unpack a folder base's tar into ``dest`` (through ``<dest>.part``, moved in place when complete). Only
    files and folders are taken, none outside ``dest`` (and tarfile's ``data`` filter on top); anything else
    refuses the whole download and leaves nothing behind."""
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if not (m.isfile() or m.isdir()) or not _safe_name(m.name):
                    raise InvalidInput(f"the base checkpoint's tar holds {m.name[:200]!r}, which is not a plain file "
                                       "or folder inside it; nothing was unpacked")
                tar.extract(m, tmp, filter="data")
        if dest.exists():  # another trainer of this cache got it first
            shutil.rmtree(tmp)
        else:
            tmp.replace(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
