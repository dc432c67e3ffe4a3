"""Template version rows: read and turned into templates, and what a job of one needs (never commits).

Versions are immutable (only ``deprecated`` changes), so this module is the one cache of both, shared by
admission, the dispatcher and the executor of a process: each row is parsed once (keyed by row id, name,
version, content hash and deprecated flag) and the requirements of a version are computed once per relevant
parameter values (``core.requirements.relevant_values``). Both caches are bounded (least recently used
out first) and thread-safe. A cached ``TemplateVersion`` is shared: treat it as read-only (``tpl.bind``
works on a copy of its graph).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from sqlmodel import Session, col, select

from orchestrator.core import requirements as reqs
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Requirements
from orchestrator.db.tables import TemplateVersionRow

K = TypeVar("K")
V = TypeVar("V")

MAX_VERSIONS = 1024  # parsed versions kept (a library has tens to hundreds)
MAX_REQUIREMENTS = 4096  # (version, relevant values) pairs kept


class _Lru(Generic[K, V]):
    """A bounded map, least recently used out first; safe to share between threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` unless another thread kept one for the key first; returns the one kept."""
        with self._lock:
            kept = self._items.setdefault(key, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return kept

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_RowKey = tuple[int | None, str, int, str, bool]  # id, name, version, content hash, deprecated
_VERSIONS: _Lru[_RowKey, tpl.TemplateVersion] = _Lru(MAX_VERSIONS)
_REQUIREMENTS: _Lru[tuple[str, int, str, str], Requirements] = _Lru(MAX_REQUIREMENTS)
_COUNTING: _Lru[tuple[str, int, str], frozenset[str]] = _Lru(MAX_VERSIONS)  # reqs.values_that_count per version
# the columns that name a version's content: read without the graph and manifest, they find it in the cache
_IDENTITY = (TemplateVersionRow.id, TemplateVersionRow.name, TemplateVersionRow.version,
             TemplateVersionRow.content_hash, TemplateVersionRow.deprecated)


def clear_cache() -> None:
    """Forget every parsed version and computed requirements (test support: tests reset the process-wide cache)."""
    _VERSIONS.clear()
    _REQUIREMENTS.clear()
    _COUNTING.clear()


def _parse(row: TemplateVersionRow) -> tpl.TemplateVersion:
    return tpl.TemplateVersion(name=row.name, version=row.version, graph=copy.deepcopy(row.graph),
                               manifest=tpl.Manifest.model_validate(row.manifest),
                               content_hash=row.content_hash, deprecated=row.deprecated)


def template_from_row(row: TemplateVersionRow) -> tpl.TemplateVersion:
    """The row's version, parsed once per process (shared: read-only)."""
    key = (row.id, row.name, row.version, row.content_hash, row.deprecated)
    found = _VERSIONS.get(key)
    return found if found is not None else _VERSIONS.put(key, _parse(row))


def parsed_versions(session: Session, ids: Iterable[int | None]) -> dict[int, tpl.TemplateVersion]:
    """The versions among these row ids that this process has parsed already, found with one read of the
    rows' identities (no graph, no manifest). Rows not parsed yet, and rows that are gone, are left out:
    :func:`template_version` reads (and parses) one of those, or says it is gone."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    found = {}
    for row_id, name, version, content_hash, deprecated in session.exec(
            select(*_IDENTITY).where(col(TemplateVersionRow.id).in_(wanted))):
        t = _VERSIONS.get((row_id, name, version, content_hash, deprecated))
        if t is not None:
            found[row_id] = t
    return found


def template_version(session: Session, version_id: int | None) -> tpl.TemplateVersion | None:
    """The version with this row id (parsed once per process), or None when there is no such row."""
    if version_id is None:
        return None
    t = parsed_versions(session, [version_id]).get(version_id)
    if t is None:
        row = session.get(TemplateVersionRow, version_id)
        t = template_from_row(row) if row is not None else None
    return t


def requirements(t: tpl.TemplateVersion, values: dict[str, Any]) -> Requirements:
    """``core.requirements.requirements(t, values)``, computed once per version and relevant values."""
    version = (t.name, t.version, t.content_hash)
    counting = _COUNTING.get(version)
    if counting is None:
        counting = _COUNTING.put(version, reqs.values_that_count(t))
    key = (*version, reqs.relevant_values(t, values, counting))
    found = _REQUIREMENTS.get(key)
    return found if found is not None else _REQUIREMENTS.put(key, reqs.requirements(t, values))


def template_rows(session: Session, name: str | None = None) -> list[TemplateVersionRow]:
    q = select(TemplateVersionRow).order_by(TemplateVersionRow.name, TemplateVersionRow.version)
    if name:
        q = q.where(TemplateVersionRow.name == name)
    return list(session.exec(q))


def get_template(session: Session, name: str, version: int | None = None) -> tuple[TemplateVersionRow,
                                                                                      tpl.TemplateVersion]:
    """The named version, or the newest one that is not deprecated (``tpl.pick``: its rule and its errors).
    Only the rows of that name are read; each is parsed once per process."""
    rows = template_rows(session, name)
    if not rows:
        raise tpl.unknown_template(name, session.exec(select(TemplateVersionRow.name).distinct()))
    t = tpl.pick([template_from_row(r) for r in rows], name, version)
    row = next(r for r in rows if r.name == t.name and r.version == t.version)
    return row, t
