"""Import inputs in bulk: the files of a folder the service may read (``import_roots``), or URLs on the
allowlisted origins (``url_allowlist``), each stored by ``artifacts.store_input`` (the same bytes give the
same artifact: "already stored"), tagged ``source:<path or URL>`` and with its sidecar JSON's scalar keys.

A refused folder or origin refuses the whole request before anything is read; after that each file stands
alone (one that fails or is not media is reported, the others are stored). Each stored file is its own
commit (``store_input``'s)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session

from custom_nodes import urls
from orchestrator.app.artifacts import store_input
from orchestrator.core import imports as rules
from orchestrator.core import limits
from orchestrator.core.errors import Forbidden, InvalidInput, MediaLabError
from orchestrator.db.tables import now
from orchestrator.runtime import graph_check, media
from orchestrator.settings import Settings
from storage import ObjectStore

MAX_SIDECAR_BYTES = 1 << 20  # a sidecar larger than this is ignored (reported on its file)


@dataclass
class ImportItem:
    """One file of an import: ``status`` is stored, already stored, skipped or failed."""

    source: str
    status: str
    artifact_id: str | None = None
    error: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    items: list[ImportItem] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {"stored": 0, "already stored": 0, "skipped": 0, "failed": 0}
        for item in self.items:
            out[item.status] += 1
        return out


Progress = Callable[[int, int, ImportItem], None]  # (done, total, the item just done)


def roots(settings: Settings) -> list[Path]:
    """The import roots, resolved (symlinks followed)."""
    return [Path(r).expanduser().resolve() for r in settings.import_roots if r.strip()]


def check_path(path: str | Path, settings: Settings) -> Path:
    """The real path of a folder (or file) to import; Forbidden (403) outside ``import_roots``, InvalidInput
    (422) for one that does not exist. The message never says whether a refused path exists."""
    given = str(path)
    if limits.CONTROL.search(given) or not given.strip():
        raise InvalidInput("the folder to import must be a printable path")
    p = Path(given).expanduser()
    if not p.is_absolute():
        raise InvalidInput(f"the folder to import must be an absolute path, not {given!r}")
    real = p.resolve()
    rules.check_inside(given, real, roots(settings), [r for r in settings.import_roots if r.strip()])
    if not real.exists():
        raise InvalidInput(f"{given!r} does not exist")
    return real


def folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The files of a folder, sorted (symlinked folders are not descended into)."""
    if folder.is_file():
        return [folder]
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink())
    out = []
    for top, _dirs, names in os.walk(folder):
        out.extend(Path(top) / n for n in names)
    return sorted(out)


def read_sidecar(file: Path) -> tuple[Any, str | None]:
    """The parsed sidecar of a media file (``x.png.json``, else ``x.json``) and a problem with it, if any."""
    for name in rules.sidecar_names(file.name):
        side = file.with_name(name)
        if side.is_file():
            try:
                if side.stat().st_size > MAX_SIDECAR_BYTES:
                    return None, f"sidecar {name} is over {MAX_SIDECAR_BYTES} bytes; ignored"
                return json.loads(side.read_text(encoding="utf-8")), None
            except (OSError, ValueError) as exc:
                return None, f"sidecar {name} is not JSON ({exc}); ignored"
    return None, None


def _store(session: Session, store: ObjectStore, path: Path, filename: str, source: str, tags: list[str],
           settings: Settings) -> ImportItem:
    """One file: checked as media (else skipped), stored with its tags."""
    caps = media.MediaLimits.of(settings)
    info = media.inspect(path, filename, caps)
    if not info.content_type.startswith(rules.MEDIA_PREFIXES):
        return ImportItem(source, "skipped", error=f"not an image or video ({info.content_type})")
    before = now()
    art = store_input(session, store, path, filename, tags, settings=settings)
    created = art.created_at if art.created_at.tzinfo else art.created_at.replace(tzinfo=before.tzinfo)
    return ImportItem(source, "stored" if created >= before else "already stored", art.id, tags=tags)


def _guarded(source: str, work: Callable[[], ImportItem]) -> ImportItem:
    try:
        return work()
    except MediaLabError as exc:
        return ImportItem(source, "failed", error=exc.message)
    except (OSError, urls.UrlRefused, urls.FetchError) as exc:
        return ImportItem(source, "failed", error=str(exc) or repr(exc))


def import_folder(session: Session, store: ObjectStore, path: str | Path, settings: Settings,
                  recursive: bool = True, tags: Iterable[str] = (), progress: Progress | None = None,
                  ) -> ImportResult:
    """Import the media files of a folder inside ``import_roots`` (sidecar ``.json`` files become tags and
    are not imported; other files are skipped). A file that is a symlink out of the roots fails alone."""
    given = limits.check_tags(tags, settings)
    folder = check_path(path, settings)
    files = folder_files(folder, recursive)
    names = {f.name for f in files}
    sidecars = {n for f in files if rules.is_media_name(f.name) for n in rules.sidecar_names(f.name) if n in names}
    candidates = [f for f in files if not (f.name in sidecars and f.suffix == rules.SIDECAR_SUFFIX)]
    limits.check_count(len(candidates), "files to import", "max_batch_items", settings.max_batch_items)
    allowed = roots(settings)
    result = ImportResult()
    for n, file in enumerate(candidates, 1):
        def one(file: Path = file) -> ImportItem:
            real = file.resolve()
            if not rules.inside(real, allowed):
                raise Forbidden(f"{str(file)!r} is a link to {str(real)!r}, outside import_roots")
            if not rules.is_media_name(file.name):
                return ImportItem(str(file), "skipped", error="not an image or video (by its name)")
            sidecar, problem = read_sidecar(file)
            file_tags = rules.file_tags(given, str(file), sidecar, settings.max_tags, settings.max_name_length)
            item = _store(session, store, real, file.name, str(file), file_tags, settings)
            item.error = item.error or problem
            return item

        item = _guarded(str(file), one)
        result.items.append(item)
        if progress:
            progress(n, len(candidates), item)
    return result


def check_urls(url_list: Sequence[str], settings: Settings) -> tuple[urls.UrlPolicy, list[urls.Target]]:
    """The URL policy and every URL checked by it (pure: origin, scheme, no credentials); one URL the rule
    refuses refuses the request (403, naming the URL and the allowlist)."""
    if not url_list:
        raise InvalidInput("no URLs to import")
    limits.check_count(len(url_list), "URLs to import", "max_batch_items", settings.max_batch_items)
    policy = graph_check.url_policy(settings)
    targets = []
    for u in url_list:
        try:
            targets.append(urls.check_url(u, policy))
        except urls.UrlRefused as exc:
            raise Forbidden(f"URL refused: {exc}", url=u[:200]) from exc
    return policy, targets


def import_urls(session: Session, store: ObjectStore, url_list: Sequence[str], settings: Settings,
                tags: Iterable[str] = (), progress: Progress | None = None) -> ImportResult:
    """Fetch and import each URL (``custom_nodes.urls.fetch``: checked addresses, ``url_max_bytes``,
    ``url_timeout_s``; redirects only within the URL's own origin)."""
    given = limits.check_tags(tags, settings)
    policy, targets = check_urls(url_list, settings)
    spool = settings.home / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    result = ImportResult()
    for n, target in enumerate(targets, 1):
        def one(target: urls.Target = target) -> ImportItem:
            own = dataclasses.replace(policy, allowlist=frozenset({target.origin}),
                                      store=target.origin if target.is_store else None)
            name = media.check_filename(Path(urlsplit(target.url).path).name or "download") or "download"
            fd, tmp = tempfile.mkstemp(dir=spool, prefix="medialab-import-")
            os.close(fd)
            try:
                urls.fetch_to_file(target.url, Path(tmp), own, settings.url_max_bytes)
                file_tags = rules.file_tags(given, target.url, None, settings.max_tags, settings.max_name_length)
                return _store(session, store, Path(tmp), name, target.url, file_tags, settings)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

        item = _guarded(target.url, one)
        result.items.append(item)
        if progress:
            progress(n, len(targets), item)
    return result
