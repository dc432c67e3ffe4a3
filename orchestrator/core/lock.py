"""The worker environment lock (``worker.lock.toml``) and how a server compares with it (no I/O).

The lock pins what a pool server needs: the ComfyUI version, the custom node packs (git URL + commit and
the node classes each provides, or this project's own pack by path and version), extra Python packages,
and every model file (name, folder, sha256, source URL). ``check_server`` compares a server's
Capabilities with it (what is missing, what differs, what the server cannot tell); ``lock_mismatch`` is
the placement rule used with ``MEDIALAB_REQUIRE_LOCK``: the ComfyUI version and the packs a job needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import InvalidInput

HEX = re.compile(r"^[0-9a-f]+$")
# Files ComfyUI itself ships in custom_nodes/ (not packs anyone installed).
BUILTIN_PACKS = frozenset({"websocket_image_save", "example_node"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComfyLock(_Strict):
    version: str
    source: str | None = None


class PackLock(_Strict):
    name: str
    git: str | None = None
    commit: str | None = None
    path: str | None = None  # this repository's own pack, installed by copy or symlink
    version: str | None = None
    requirements: str | None = None  # the pack's requirements file to pip-install
    python: list[str] = Field(default_factory=list)  # extra pip requirement specifiers
    node_classes: list[str] = Field(default_factory=list)

    @field_validator("commit")
    @classmethod
    def _hex_commit(cls, v: str | None) -> str | None:
        if v is not None and not (7 <= len(v) <= 40 and HEX.match(v)):
            raise ValueError(f"{v!r} is not a git commit (7 to 40 lowercase hex digits)")
        return v

    @model_validator(mode="after")
    def _source(self) -> PackLock:
        if bool(self.git) == bool(self.path):
            raise ValueError(f"pack {self.name!r} needs exactly one of git (with commit) or path")
        if self.git and not self.commit:
            raise ValueError(f"pack {self.name!r} comes from git but pins no commit")
        return self


class PythonLock(_Strict):
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


class ModelLock(_Strict):
    name: str
    folder: str  # models/<folder>, or a folder inside ``pack``
    url: str
    sha256: str = ""  # "" when unknown: the bootstrap records what it computed and warns
    size: int | None = None
    pack: str | None = None
    archive: Literal["zip"] | None = None
    used_by: list[str] = Field(default_factory=list)

    @field_validator("sha256")
    @classmethod
    def _hex_sha(cls, v: str) -> str:
        v = v.lower()
        if v and not (len(v) == 64 and HEX.match(v)):
            raise ValueError(f"{v!r} is not a sha256 (64 hex digits, or \"\" when unknown)")
        return v

    @property
    def ref(self) -> str:
        return f"{self.pack + '/' if self.pack else ''}{self.folder}/{self.name}"


class WorkerLock(_Strict):
    lock_version: int = 1
    comfyui: ComfyLock
    packs: list[PackLock] = Field(default_factory=list, alias="pack")
    python: list[PythonLock] = Field(default_factory=list)
    models: list[ModelLock] = Field(default_factory=list, alias="model")

    @model_validator(mode="after")
    def _consistent(self) -> WorkerLock:
        names = [p.name for p in self.packs]
        if len(set(names)) != len(names):
            raise ValueError(f"pack names repeat: {names}")
        refs = [m.ref for m in self.models]
        if len(set(refs)) != len(refs):
            raise ValueError("a model is listed twice: " + ", ".join(sorted({r for r in refs if refs.count(r) > 1})))
        for m in self.models:
            if m.pack and m.pack not in names:
                raise ValueError(f"model {m.name!r} belongs to pack {m.pack!r}, which the lock does not list")
        return self

    def pack(self, name: str) -> PackLock:
        return next(p for p in self.packs if p.name == name)

    def packs_for(self, node_classes: frozenset[str] | set[str]) -> list[PackLock]:
        """The locked packs that provide any of these node classes."""
        return [p for p in self.packs if node_classes & set(p.node_classes)]


def parse_lock(data: dict[str, Any], where: str = "worker lock") -> WorkerLock:
    try:
        return WorkerLock.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"worker lock {where}: {problems}") from exc


# -- comparing a server with the lock ---------------------------------------------------------------------
def _norm_name(name: str) -> str:
    return name.lower().replace("-", "_").removesuffix(".git")


def _norm_url(url: str) -> str:
    url = url.strip().lower().removesuffix("/").removesuffix(".git")
    url = re.sub(r"^(https?|git|ssh|file)://", "", url)
    url = re.sub(r"^git@([^:]+):", r"\1/", url)
    return url


def commits_match(server: str | None, lock: str | None) -> bool:
    """Same commit, allowing either side to be abbreviated (at least 7 hex digits)."""
    if not server or not lock:
        return False
    server, lock = server.lower(), lock.lower()
    return server.startswith(lock) or lock.startswith(server) if min(len(server), len(lock)) >= 7 else False


def installed(caps: Capabilities) -> list[dict[str, Any]] | None:
    """The packs the server's node pack reports (name, commit, remote, files); None when it reports none."""
    entries = (caps.pack or {}).get("custom_nodes")
    return entries if isinstance(entries, list) else None


def find_entry(caps: Capabilities, pack: PackLock) -> dict[str, Any] | None:
    """The server's installed-pack entry for a locked pack: by git remote first, then by folder name."""
    entries = installed(caps) or []
    if pack.git:
        for e in entries:
            if e.get("remote") and _norm_url(str(e["remote"])) == _norm_url(pack.git):
                return e
    return next((e for e in entries if _norm_name(str(e.get("name", ""))) == _norm_name(pack.name)), None)


@dataclass(frozen=True)
class PackStatus:
    """One locked pack on one server."""

    present: bool  # at least one of its node classes is there (or, for our pack, /medialab/info answers)
    missing_nodes: tuple[str, ...]
    problem: str | None  # the commit or version differs from the lock
    unknown: str | None  # the server cannot tell the commit


def pack_status(caps: Capabilities, pack: PackLock) -> PackStatus:
    missing_nodes = tuple(sorted(set(pack.node_classes) - caps.node_classes))
    if pack.path:  # this project's pack: /medialab/info reports its version
        present = caps.pack is not None or len(missing_nodes) < len(pack.node_classes)
        version = (caps.pack or {}).get("version")
        problem = None
        if present and pack.version and version and version != pack.version:
            problem = f"{pack.name} {version} (lock: {pack.version})"
        unknown = f"{pack.name} version (no /medialab/info)" if present and not version and pack.version else None
        return PackStatus(present, missing_nodes, problem, unknown)
    entry = find_entry(caps, pack)
    present = entry is not None or len(missing_nodes) < len(pack.node_classes) or not pack.node_classes
    if not present:
        return PackStatus(False, missing_nodes, None, None)
    if installed(caps) is None:
        return PackStatus(True, missing_nodes, None,
                          f"{pack.name} commit (the server does not report pack commits: the medialab pack is missing)")
    if entry is None:
        return PackStatus(True, missing_nodes, None, f"{pack.name} commit (no folder of that name or remote)")
    if not entry.get("commit"):
        return PackStatus(True, missing_nodes, f"{pack.name} is not a git checkout (lock: {pack.commit[:12]})", None)
    if not commits_match(entry["commit"], pack.commit):
        return PackStatus(True, missing_nodes,
                          f"{pack.name} at {str(entry['commit'])[:12]} (lock: {pack.commit[:12]})", None)
    return PackStatus(True, missing_nodes, None, None)


@dataclass
class LockReport:
    """What a server lacks or does differently from the lock. ``ok`` when nothing is missing or differs."""

    comfy_version: str | None = None
    missing_packs: list[str] = field(default_factory=list)
    missing_nodes: dict[str, list[str]] = field(default_factory=dict)  # pack -> node classes
    missing_models: list[str] = field(default_factory=list)
    missing_python: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # ComfyUI version, pack commits, package versions
    unverified: list[str] = field(default_factory=list)  # what the server cannot report
    extra: list[str] = field(default_factory=list)  # packs the lock does not list

    @property
    def ok(self) -> bool:
        return not (self.missing_packs or self.missing_nodes or self.missing_models or self.missing_python
                    or self.mismatches)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "comfy_version": self.comfy_version, "missing_packs": self.missing_packs,
                "missing_nodes": self.missing_nodes, "missing_models": self.missing_models,
                "missing_python": self.missing_python, "mismatches": self.mismatches,
                "unverified": self.unverified, "extra": self.extra}


def _has_model(files: frozenset[str], name: str) -> bool:
    return name in files or any(f.endswith("/" + name) for f in files)


def _check_model(caps: Capabilities, lock: WorkerLock, m: ModelLock, report: LockReport) -> None:
    if m.pack:
        pack = lock.pack(m.pack)
        if not pack_status(caps, pack).present:
            report.missing_models.append(m.ref)
            return
        entry = find_entry(caps, pack) if installed(caps) is not None else None
        if entry is None:
            report.unverified.append(f"{m.ref} (the server does not list the pack's files)")
        elif f"{m.folder}/{m.name}" not in entry.get("files", []):
            report.missing_models.append(m.ref)
        return
    if m.folder not in caps.models:
        report.unverified.append(f"{m.ref} (the server does not list models/{m.folder})")
    elif not _has_model(caps.models[m.folder], m.name):
        report.missing_models.append(m.ref)


def check_server(caps: Capabilities | None, lock: WorkerLock) -> LockReport:
    """Compare one server's capabilities with the lock."""
    report = LockReport()
    if caps is None:
        report.missing_packs.append("(capabilities not known yet: the server was never reached)")
        return report
    report.comfy_version = caps.comfy_version
    if caps.comfy_version is None:
        report.unverified.append("ComfyUI version (not reported)")
    elif caps.comfy_version != lock.comfyui.version:
        report.mismatches.append(f"ComfyUI {caps.comfy_version} (lock: {lock.comfyui.version})")
    for pack in lock.packs:
        status = pack_status(caps, pack)
        if not status.present:
            report.missing_packs.append(pack.name)
            continue
        if status.missing_nodes:
            report.missing_nodes[pack.name] = list(status.missing_nodes)
        if status.problem:
            report.mismatches.append(status.problem)
        if status.unknown:
            report.unverified.append(status.unknown)
    for m in lock.models:
        _check_model(caps, lock, m, report)
    _check_python(caps, lock, report)
    locked = {_norm_name(p.name) for p in lock.packs} | {"medialab"}
    locked_urls = {_norm_url(p.git) for p in lock.packs if p.git}
    names = {str(e.get("name")) for e in installed(caps) or []
             if not (e.get("remote") and _norm_url(str(e["remote"])) in locked_urls)} | set(caps.packs)
    report.extra = sorted(n for n in names if _norm_name(n) not in locked and n not in BUILTIN_PACKS)
    return report


def _check_python(caps: Capabilities, lock: WorkerLock, report: LockReport) -> None:
    have = (caps.pack or {}).get("python_packages")
    if not isinstance(have, dict):
        if lock.python:
            report.unverified.append("Python packages (the server does not report them: the medialab pack is "
                                     "missing or older)")
        return
    for p in lock.python:
        version = have.get(p.name) or have.get(f"{p.name}-gpu")  # onnxruntime-gpu serves for onnxruntime
        if version is None:
            report.missing_python.append(p.spec)
        elif version != p.version:
            report.mismatches.append(f"{p.name} {version} (lock: {p.version})")


def lock_mismatch(caps: Capabilities | None, node_classes: frozenset[str], lock: WorkerLock) -> list[str]:
    """Placement with MEDIALAB_REQUIRE_LOCK: why the server does not match the lock for a job that needs
    these node classes ([] when it does). Checked: the ComfyUI version, and the commit (or, for this
    project's pack, the version) of each locked pack the job uses; a commit the server cannot report
    counts as a mismatch."""
    if caps is None:
        return ["(capabilities not known yet)"]
    problems = []
    if caps.comfy_version != lock.comfyui.version:
        problems.append(f"ComfyUI {caps.comfy_version or 'of unknown version'} (lock: {lock.comfyui.version})")
    for pack in lock.packs_for(node_classes):
        status = pack_status(caps, pack)
        if status.present and (status.problem or status.unknown):
            problems.append(status.problem or f"unknown {status.unknown}")
    return problems
