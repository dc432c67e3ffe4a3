"""Bootstrap a ComfyUI pool server from the worker lock (worker.lock.toml).

Usage: python scripts/bootstrap_worker.py --comfyui DIR [--models DIR] [--lock FILE] [--from MIRROR]
                                          [--only packs|models|python] [--pip] [--python PATH] [--link]
                                          [--dry-run]

- packs: clones each git pack into DIR/custom_nodes/<name> at its locked commit (an existing checkout is
  fetched and moved to it), and installs this project's pack (copy, or symlink with --link);
- python (with --pip, or --only python): pip-installs the locked packages and the packs' requirements into
  the Python that runs that ComfyUI (--python, default this one);
- models: downloads each model (resuming a ``.part`` file), verifies its sha256 and only then renames it
  into place, so no half file is ever left under its real name; pack models (RIFE) go into the pack's
  folder, ``archive = "zip"`` models are unpacked; writes DIR/extra_model_paths.yaml when --models is
  elsewhere. A model whose lock has no sha256 is kept with a warning, and the hash computed is recorded
  in <models>/.medialab-lock-hashes.json (so nothing is "verified" silently);
- --from MIRROR takes everything from a local folder instead of the network: packs from
  MIRROR/packs/<name> (or <name>.git; any git repository), models from MIRROR/models/<folder>/<name>,
  MIRROR/models/<name> or MIRROR/models/<file name of the URL>.
Re-running is safe: what is in place (and verifies) is left alone. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.core.errors import MediaLabError  # noqa: E402
from orchestrator.core.lock import ModelLock, PackLock, WorkerLock, commits_match  # noqa: E402
from orchestrator.runtime.worker_lock import DEFAULT_LOCK, load_lock  # noqa: E402

CHUNK = 1 << 20
ROOT_ONLY_FOLDERS = ("insightface",)  # IPAdapter_plus reads these from <ComfyUI>/models, never extra paths
HASHES_FILE = ".medialab-lock-hashes.json"
HEADER = "# written by scripts/bootstrap_worker.py from worker.lock.toml\n"


class BootstrapError(Exception):
    pass


@dataclass
class Target:
    comfyui: Path
    models: Path
    mirror: Path | None = None

    @property
    def custom_nodes(self) -> Path:
        return self.comfyui / "custom_nodes"

    def model_path(self, m: ModelLock) -> Path:
        if m.pack:
            return self.custom_nodes / m.pack / m.folder / m.name
        base = self.comfyui / "models" if m.folder.split("/")[0] in ROOT_ONLY_FOLDERS else self.models
        return base / m.folder / m.name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BootstrapError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout.strip()


# -- packs ------------------------------------------------------------------------------------------------
def pack_source(pack: PackLock, mirror: Path | None) -> str:
    if mirror is None:
        return str(pack.git)
    for candidate in (mirror / "packs" / pack.name, mirror / "packs" / f"{pack.name}.git"):
        if candidate.exists():
            return candidate.resolve().as_uri()
    raise BootstrapError(f"pack {pack.name}: not in the mirror (looked for {mirror / 'packs' / pack.name}[.git])")


def head_commit(folder: Path) -> str | None:
    if not (folder / ".git").exists():
        return None
    try:
        return run(["git", "rev-parse", "HEAD"], cwd=folder)
    except BootstrapError:
        return None


def install_git_pack(pack: PackLock, t: Target, dry: bool) -> str:
    dest = t.custom_nodes / pack.name
    have = head_commit(dest)
    if have and commits_match(have, pack.commit):
        return f"pack {pack.name}: at {have[:12]} already"
    source = pack_source(pack, t.mirror)
    if dest.exists() and have is None:
        raise BootstrapError(f"pack {pack.name}: {dest} exists and is no git checkout; move it away first")
    if dry:
        verb = f"move from {have[:12]}" if have else "clone"
        return f"pack {pack.name}: would {verb} to {pack.commit} from {source} into {dest}"
    if have is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["git", "clone", "--quiet", "--no-checkout", source, str(dest)])
    else:
        run(["git", "fetch", "--quiet", source, "+refs/heads/*:refs/remotes/lock/*", "--tags"], cwd=dest)
    full = run(["git", "rev-parse", "--verify", f"{pack.commit}^{{commit}}"], cwd=dest)
    run(["git", "checkout", "--quiet", "--detach", full], cwd=dest)
    if not commits_match(head_commit(dest), pack.commit):
        raise BootstrapError(f"pack {pack.name}: checkout did not land on {pack.commit}")
    return f"pack {pack.name}: {'cloned' if have is None else 'moved'} to {full[:12]}"


def install_own_pack(pack: PackLock, t: Target, link: bool, dry: bool) -> str:
    source = (REPO / str(pack.path)).resolve()
    dest = t.custom_nodes / pack.name
    if dry:
        return f"pack {pack.name}: would {'link' if link else 'copy'} {source} to {dest}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    if link:
        dest.symlink_to(source, target_is_directory=True)
    else:
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return f"pack {pack.name}: {'linked' if link else 'copied'} to {dest}"


def python_specs(lock: WorkerLock, t: Target) -> list[str]:
    specs = [p.spec for p in lock.python]
    for pack in lock.packs:
        specs += pack.python
        if pack.requirements and (t.custom_nodes / pack.name / pack.requirements).exists():
            specs += ["-r", str(t.custom_nodes / pack.name / pack.requirements)]
    return specs


# -- models -----------------------------------------------------------------------------------------------
def mirror_file(m: ModelLock, mirror: Path) -> Path:
    url_name = Path(urlparse(m.url).path).name
    candidates = [mirror / "models" / m.folder / m.name, mirror / "models" / m.name, mirror / "models" / url_name]
    for c in candidates:
        if c.is_file():
            return c
    raise BootstrapError(f"model {m.ref}: not in the mirror (looked for {', '.join(map(str, candidates))})")


def fetch_to(m: ModelLock, part: Path, mirror: Path | None) -> None:
    """Append the rest of the file to ``part`` (resuming what is there), from the mirror or the URL."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if m.size is not None and have >= m.size:  # a run stopped between download and verify: nothing to fetch
        return
    if mirror is not None:
        src = mirror_file(m, mirror)
        with src.open("rb") as fin, part.open("ab") as fout:
            fin.seek(have)
            shutil.copyfileobj(fin, fout, CHUNK)
        return
    req = urllib.request.Request(m.url, headers={"User-Agent": "medialab-bootstrap/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            mode = "ab" if have and r.status == 206 else "wb"  # a server that ignores Range sends it all again
            with part.open(mode) as fout:
                shutil.copyfileobj(r, fout, CHUNK)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we have: the download was complete
            return
        raise BootstrapError(f"model {m.ref}: download from {m.url} failed ({exc}); run again to resume") from exc
    except OSError as exc:
        raise BootstrapError(f"model {m.ref}: download from {m.url} failed ({exc}); run again to resume") from exc


def verify(m: ModelLock, part: Path) -> tuple[str, bool]:
    """Check size and sha256 of the finished download; a bad file is deleted. Returns (sha256, verified)."""
    size = part.stat().st_size
    if m.size is not None and size < m.size:  # kept: the next run resumes it
        raise BootstrapError(f"model {m.ref}: only {size} of {m.size} bytes arrived; run again to resume")
    if m.size is not None and size > m.size:
        part.unlink()
        raise BootstrapError(f"model {m.ref}: {size} bytes, more than the lock's {m.size}; deleted, run again")
    digest = sha256_of(part)
    if m.sha256 and digest != m.sha256:
        part.unlink()
        raise BootstrapError(f"model {m.ref}: sha256 {digest} is not the lock's {m.sha256}; deleted")
    return digest, bool(m.sha256)


def unpack(archive: Path, dest: Path, name: str) -> None:
    """Unpack into a temporary folder next to ``dest`` and rename it in place (one top folder ``name`` is
    stripped)."""
    tmp = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if not (tmp / info.filename).resolve().is_relative_to(tmp.resolve()):
                raise BootstrapError(f"{archive.name}: unsafe path {info.filename!r} in the archive")
        z.extractall(tmp)
    inner = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
    root = inner[0] if len(inner) == 1 and inner[0].is_dir() and inner[0].name == name else tmp
    if dest.exists():
        shutil.rmtree(dest)
    root.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def install_model(m: ModelLock, t: Target, hashes: dict[str, dict], dry: bool, trust_existing: bool) -> str:
    dest = t.model_path(m)
    marker = dest / ".medialab-sha256" if m.archive else None
    if dest.exists():
        if m.archive:
            recorded = marker.read_text().strip() if marker and marker.exists() else ""
            if not m.sha256 or recorded == m.sha256:
                return f"model {m.ref}: present"
        elif trust_existing or not m.sha256:
            return f"model {m.ref}: present" + ("" if m.sha256 else " (no sha256 in the lock: not verified)")
        elif sha256_of(dest) == m.sha256:
            return f"model {m.ref}: present, sha256 ok"
        if dry:
            return f"model {m.ref}: would replace {dest} (sha256 differs from the lock)"
    if dry:
        size = f" ({m.size / 2**20:.0f} MiB)" if m.size else ""
        return f"model {m.ref}: would fetch {t.mirror or m.url}{size} to {dest}"
    part = dest.with_name(f".{dest.name}{'.' + m.archive if m.archive else ''}.part")
    fetch_to(m, part, t.mirror)
    digest, verified = verify(m, part)
    if m.archive:
        unpack(part, dest, m.name)
        (dest / ".medialab-sha256").write_text(digest + "\n")
        part.unlink()
    else:
        os.replace(part, dest)
    hashes[m.ref] = {"sha256": digest, "size": dest.stat().st_size if dest.is_file() else None, "url": m.url,
                     "verified": verified}
    if not verified:
        print(f"WARNING: model {m.ref}: the lock has no sha256; NOT verified. Computed sha256 {digest} "
              f"(recorded in {t.models / HASHES_FILE}); put it in the lock once the file is trusted",
              file=sys.stderr)
        return f"model {m.ref}: installed, UNVERIFIED sha256 {digest}"
    return f"model {m.ref}: installed, sha256 ok"


def model_paths_yaml(lock: WorkerLock, t: Target) -> str:
    folders = sorted({m.folder.split("/")[0] for m in lock.models if not m.pack}
                     - set(ROOT_ONLY_FOLDERS) | {"checkpoints", "loras", "vae", "upscale_models", "clip_vision",
                                                 "ipadapter", "embeddings", "controlnet"})
    lines = [HEADER.rstrip(), "medialab:", f"  base_path: {t.models.resolve()}"]
    return "\n".join(lines + [f"  {f}: {f}" for f in folders]) + "\n"


def write_model_paths(lock: WorkerLock, t: Target, dry: bool) -> str | None:
    if t.models.resolve() == (t.comfyui / "models").resolve():
        return None
    path = t.comfyui / "extra_model_paths.yaml"
    if path.exists() and not path.read_text().startswith(HEADER):
        raise BootstrapError(f"{path} exists and was not written by this script: add the folders of "
                             f"{t.models} to it yourself (see extra_model_paths.yaml.example)")
    if dry:
        return f"would write {path} (models from {t.models})"
    path.write_text(model_paths_yaml(lock, t))
    return f"wrote {path}"


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI root (custom_nodes/, models/)")
    ap.add_argument("--models", type=Path, help="models folder (default: <comfyui>/models)")
    ap.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    ap.add_argument("--from", dest="mirror", type=Path, help="a local mirror folder instead of the network")
    ap.add_argument("--only", choices=["packs", "models", "python"], help="do only this part")
    ap.add_argument("--pip", action="store_true", help="also pip-install the locked Python packages")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs that ComfyUI")
    ap.add_argument("--link", action="store_true", help="symlink this project's pack instead of copying it")
    ap.add_argument("--trust-existing", action="store_true", help="do not re-hash model files already in place")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = ap.parse_args(argv)
    try:
        lock = load_lock(args.lock)
    except MediaLabError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if not (args.comfyui / "main.py").exists():
        print(f"note: {args.comfyui} has no main.py (not a ComfyUI checkout?); installing into it anyway",
              file=sys.stderr)
    t = Target(args.comfyui, args.models or args.comfyui / "models", args.mirror)
    dry = args.dry_run
    failures: list[str] = []

    def step(fn, *a) -> None:  # noqa: ANN001
        try:
            line = fn(*a)
        except (BootstrapError, OSError) as exc:
            failures.append(str(exc))
            print(f"FAILED: {exc}", file=sys.stderr)
            return
        if line:
            print(line)

    print(f"{'plan' if dry else 'bootstrap'}: lock {args.lock} (ComfyUI {lock.comfyui.version}) -> {t.comfyui}"
          + (f", models {t.models}" if args.models else "") + (f", from mirror {t.mirror}" if t.mirror else ""))
    if args.only in (None, "packs"):
        for pack in lock.packs:
            if pack.git:
                step(install_git_pack, pack, t, dry)
            else:
                step(install_own_pack, pack, t, args.link, dry)
    if args.only == "python" or (args.only in (None, "packs") and args.pip):
        specs = python_specs(lock, t)
        cmd = [args.python, "-m", "pip", "install", "-q", *specs]
        if dry:
            print("would run: " + " ".join(cmd))
        else:
            step(lambda: (run(cmd), "pip: " + " ".join(s for s in specs if s != "-r"))[1])
    if args.only in (None, "models"):
        hashes_path = t.models / HASHES_FILE
        hashes = json.loads(hashes_path.read_text()) if hashes_path.exists() else {}
        for m in lock.models:
            step(install_model, m, t, hashes, dry, args.trust_existing)
        if hashes and not dry:
            t.models.mkdir(parents=True, exist_ok=True)
            hashes_path.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
        step(write_model_paths, lock, t, dry)
    if failures:
        print(f"{len(failures)} step(s) failed", file=sys.stderr)
        return 1
    print("plan only: nothing changed" if dry else "done; restart ComfyUI, then `medialab servers check`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
