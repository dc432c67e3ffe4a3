"""The custom node packs installed next to this one, with their git commit (read from ``.git``, no git binary).

Reported by ``GET /medialab/info`` so that the orchestrator can compare a server with the worker lock
(``worker.lock.toml``): which packs are there, at which commit, from which remote.
"""

from __future__ import annotations

import configparser
import importlib.metadata
from pathlib import Path
from typing import Any

# Python distributions whose installed version the info route reports (the lock pins some of them).
REPORTED_DISTRIBUTIONS = ("insightface", "onnxruntime", "onnxruntime-gpu", "minio", "torch")
MAX_FILES = 200


def git_dir(folder: Path) -> Path | None:
    """The folder's git directory: ``.git`` itself, or where a ``.git`` file (``gitdir: ...``) points."""
    dot = folder / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        text = dot.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            target = target if target.is_absolute() else (folder / target)
            return target if target.is_dir() else None
    return None


def _resolve_ref(gdir: Path, ref: str) -> str | None:
    loose = gdir / ref
    if loose.is_file():
        return loose.read_text().strip() or None
    common = gdir / "commondir"  # a worktree keeps branch refs in the main repository
    if common.is_file():
        main = (gdir / common.read_text().strip()).resolve()
        if (main / ref).is_file():
            return (main / ref).read_text().strip() or None
        gdir = main
    packed = gdir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and not line.startswith(("#", "^")):
                return parts[0]
    return None


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder`` (detached or on a branch), or None when it is no git checkout."""
    gdir = git_dir(folder)
    if gdir is None or not (gdir / "HEAD").is_file():
        return None
    head = (gdir / "HEAD").read_text(errors="replace").strip()
    if head.startswith("ref:"):
        return _resolve_ref(gdir, head.removeprefix("ref:").strip())
    return head or None


def git_remote(folder: Path) -> str | None:
    """The URL of the ``origin`` remote (or the first remote) in the folder's git config."""
    gdir = git_dir(folder)
    if gdir is None or not (gdir / "config").is_file():
        return None
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        cfg.read(gdir / "config")
    except configparser.Error:
        return None
    remotes = [s for s in cfg.sections() if s.startswith("remote ")]
    remotes.sort(key=lambda s: s != 'remote "origin"')
    return cfg.get(remotes[0], "url", fallback=None) if remotes else None


def pack_files(folder: Path) -> list[str]:
    """Model files kept inside a pack (its ``ckpts/`` folder, e.g. RIFE checkpoints), relative to the pack."""
    ckpts = folder / "ckpts"
    if not ckpts.is_dir():
        return []
    files = sorted(p.relative_to(folder).as_posix() for p in ckpts.rglob("*") if p.is_file())
    return files[:MAX_FILES]


def installed_packs(custom_nodes: Path) -> list[dict[str, Any]]:
    """Each pack folder (or single-file pack) in ``custom_nodes``: name, commit, remote, files inside it."""
    packs: list[dict[str, Any]] = []
    if not custom_nodes.is_dir():
        return packs
    for entry in sorted(custom_nodes.iterdir(), key=lambda p: p.name.lower()):
        if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
            continue
        if entry.is_dir():
            packs.append({"name": entry.name, "commit": git_commit(entry), "remote": git_remote(entry),
                          "files": pack_files(entry)})
        elif entry.suffix == ".py":
            packs.append({"name": entry.stem, "commit": None, "remote": None, "files": []})
    return packs


def distributions(names: tuple[str, ...] = REPORTED_DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions of the named Python distributions (absent ones are left out)."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
