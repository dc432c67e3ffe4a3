"""Bulk import rules (pure): which folders may be read, which files are sidecars, and the tags an imported
file gets (its source and its sidecar's scalar keys), all bounded by the tag limits of ``core/limits.py``.

No files are read here: the caller resolves real paths (symlinks followed) and parses the sidecar JSON."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from orchestrator.core.errors import Forbidden
from orchestrator.core.limits import CONTROL

SOURCE_PREFIX = "source:"
SIDECAR_SUFFIX = ".json"
MEDIA_PREFIXES = ("image/", "video/")


def inside(real: PurePath, roots: Iterable[PurePath]) -> bool:
    """Whether a resolved path is one of the resolved roots or below one (compared by path parts, so
    ``/data/in2`` is not inside ``/data/in``)."""
    return any(real == root or root in real.parents for root in roots)


def check_inside(given: str, real: PurePath, roots: Sequence[PurePath], shown_roots: Sequence[str]) -> None:
    """Refuse (403, naming the setting) a path whose real path is outside every import root."""
    if not shown_roots:
        raise Forbidden("folder import is off: the setting import_roots (MEDIALAB_IMPORT_ROOTS) lists no folder",
                        setting="import_roots")
    if not inside(real, roots):
        extra = f" (it resolves to {str(real)!r})" if str(real) != given else ""
        raise Forbidden(f"{given!r}{extra} is outside the folders the service may import from: import_roots "
                        f"(MEDIALAB_IMPORT_ROOTS) is {list(shown_roots)}", setting="import_roots")


def is_media_name(name: str) -> bool:
    """A file name that says image or video (the bytes are checked when the file is stored)."""
    return (mimetypes.guess_type(name)[0] or "").startswith(MEDIA_PREFIXES)


def sidecar_names(name: str) -> tuple[str, str]:
    """The sidecar names of a media file, in the order they are looked for: ``x.png.json``, then ``x.json``."""
    return name + SIDECAR_SUFFIX, PurePath(name).stem + SIDECAR_SUFFIX


def printable(value: str) -> str:
    """A value with its control characters (newlines included) as spaces: a tag is printable text."""
    return CONTROL.sub(" ", value).strip()


def bounded(text: str, max_length: int) -> str:
    """``text`` cut to ``max_length`` characters: the end is kept (a path's file name), the cut part replaced
    by ``…`` and 8 hex of the whole text's sha256, so two long texts that share their end stay distinct."""
    if len(text) <= max_length:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    keep = max(max_length - len(digest) - 1, 0)
    return (digest + "…" + text[len(text) - keep:] if keep else digest)[:max_length]


def source_tag(source: str, max_length: int) -> str:
    """``source:<path or URL>``; longer than ``max_length`` (max_name_length), the start of the source goes
    (``bounded``): ``source:<8 hex>…<its end>``."""
    return SOURCE_PREFIX + bounded(printable(source), max_length - len(SOURCE_PREFIX))


def sidecar_tags(data: Any, room: int, max_length: int) -> list[str]:
    """A sidecar's top-level scalar keys (strings, numbers, booleans; null, lists and objects are left out)
    as ``key:value`` tags, values stringified (``true``/``false`` for booleans), keys in sorted order, at most
    ``room`` of them; a tag longer than ``max_length`` keeps its start (``key:`` and the value's beginning)."""
    if not isinstance(data, Mapping) or room <= 0:
        return []
    out: list[str] = []
    for key in sorted(k for k in data if isinstance(k, str)):
        value = data[key]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            continue
        tag = printable(f"{printable(key)}:{printable(text)}")[:max_length].strip()
        if ":" in tag and not tag.startswith(":") and tag not in out:
            out.append(tag)
        if len(out) >= room:
            break
    return out


def file_tags(given: Sequence[str], source: str, sidecar: Any, max_tags: int, max_length: int) -> list[str]:
    """The tags of one imported file: the request's own (already checked), its source, then as many sidecar
    tags as ``max_tags`` leaves room for."""
    base = list(dict.fromkeys([*given, source_tag(source, max_length)]))[:max_tags]
    return base + [t for t in sidecar_tags(sidecar, max_tags - len(base) + 8, max_length)
                   if t not in base][:max_tags - len(base)]
