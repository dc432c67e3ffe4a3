"""The model registry: trained LoRAs by sha256, their state, metadata and lineage, and their distribution.

A LoRA is registered once per content (sha256) with a name and a version number per name, the base model
it was trained on, its trigger words, the training parameters, the ``ss_*``/``modelspec.*`` metadata read
from its safetensors header and the dataset artifact it was trained on. It lives in the pool servers'
``loras`` folder as ``<name>-v<version>.safetensors``.

States: ``candidate`` -> ``approved`` | ``withdrawn``; ``approved`` -> ``withdrawn``; ``withdrawn`` ->
``approved``. A new LoRA starts in ``MEDIALAB_LORA_INITIAL_STATE`` (``approved`` by default, so the
``generate-lora`` template can use it right away; set ``candidate`` to require a review first). A job may
name a registered LoRA only while it is approved; files in a loras folder that the registry does not
know are not its business.

Distribution: a local worker (started by this orchestrator) gets a copy in its own models folder; every
other server reads ``MEDIALAB_SHARED_MODELS_DIR``, which its ``extra_model_paths.yaml`` must list. The
servers' capabilities are read again afterwards, so placement knows at once which servers have it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select

from orchestrator.comfy.client import ComfyClient
from orchestrator.core import limits
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import Conflict, InvalidInput, MediaLabError, NotFound
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import audit
from orchestrator.db import servers as server_db
from orchestrator.db.tables import Artifact, LoraModel, ServerRow, now
from orchestrator.settings import Settings
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.runtime.pool import Pool

LORA_FOLDER = "loras"
# A LoRA's registry name (its files are <name>-v<N>.safetensors), checked with limits.check_name
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
NAME_RULE = "use lower-case letters, digits, '_' or '-', starting with a letter or digit"
MAX_NAME_LENGTH, NAME_LIMIT = 64, "registry.MAX_NAME_LENGTH"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class LoraState(StrEnum):
    candidate = "candidate"
    approved = "approved"
    withdrawn = "withdrawn"


STATE_ACTIONS = {LoraState.approved: "model.approve", LoraState.withdrawn: "model.withdraw"}  # the audit trail
TRANSITIONS: dict[LoraState, frozenset[LoraState]] = {
    LoraState.candidate: frozenset({LoraState.approved, LoraState.withdrawn}),
    LoraState.approved: frozenset({LoraState.withdrawn}),
    LoraState.withdrawn: frozenset({LoraState.approved}),
}


# -- pure rules ------------------------------------------------------------------------------------
def check_state_change(current: str, new: str) -> LoraState:
    """The new state when the change is allowed; Conflict (or InvalidInput for an unknown state) otherwise."""
    try:
        target = LoraState(new)
    except ValueError as exc:
        raise InvalidInput(f"unknown model state {new!r}; states: {', '.join(s.value for s in LoraState)}") from exc
    if target not in TRANSITIONS[LoraState(current)]:
        raise Conflict(f"a {current} model cannot become {new}")
    return target


def lora_filename(name: str, version: int) -> str:
    return f"{name}-v{version}.safetensors"


def unusable(refs: Iterable[tuple[str, str]], states: dict[str, str]) -> list[str]:
    """Problems for the LoRA files a job names: a registered file (``states``: filename -> state) must be
    approved. Files the registry does not know are left to the servers' capabilities."""
    problems = []
    for folder, name in sorted(set(refs)):
        if folder != LORA_FOLDER or name not in states or states[name] == LoraState.approved:
            continue
        problems.append(f"LoRA {name} is {states[name]}: only approved models may be used "
                        f"(medialab models approve {name})")
    return problems


def training_metadata(header: dict[str, Any]) -> dict[str, Any]:
    """The ``ss_*`` and ``modelspec.*`` entries of a header, JSON-encoded values decoded."""
    meta = header.get("__metadata__") or {}
    out: dict[str, Any] = {}
    for k, v in sorted(meta.items()):
        if not (k.startswith("ss_") or k.startswith("modelspec.")):
            continue
        if isinstance(v, str) and v[:1] in "{[":
            with contextlib.suppress(json.JSONDecodeError):
                v = json.loads(v)
        out[k] = v
    return out


def lora_keys(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


# -- reading a file (I/O on the handle it is given) ------------------------------------------------
def read_header(f: IO[bytes]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor index plus ``__metadata__``)."""
    raw = f.read(8)
    if len(raw) != 8:
        raise InvalidInput("not a safetensors file: shorter than its header length")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER:
        raise InvalidInput(f"not a safetensors file: header length {length} is implausible")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"not a safetensors file: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidInput("not a safetensors file: header is not a JSON object")
    return header


# -- database --------------------------------------------------------------------------------------
def model_states(session: Session, filenames: Iterable[str]) -> dict[str, str]:
    names = list(set(filenames))
    if not names:
        return {}
    rows = session.exec(select(LoraModel.filename, LoraModel.state).where(col(LoraModel.filename).in_(names)))
    return dict(rows.all())


def check_usable(session: Session, refs: Iterable[tuple[str, str]]) -> None:
    """Refuse a job that names a registered LoRA that is not approved."""
    refs = list(refs)
    problems = unusable(refs, model_states(session, (n for f, n in refs if f == LORA_FOLDER)))
    if problems:
        raise InvalidInput("; ".join(problems), errors=[{"message": p} for p in problems])


def register(session: Session, store: ObjectStore, artifact: Artifact, name: str, *, base_model: str | None,
             trigger_words: list[str], training: dict[str, Any] | None = None,
             dataset_artifact_id: str | None = None, job_id: str | None = None,
             initial_state: str = LoraState.approved) -> LoraModel:
    """Register a LoRA artifact (the same bytes twice: the existing entry). Reads its safetensors header.

    Never commits: the row goes in through a savepoint of the caller's transaction, which the caller commits
    (or rolls back: then nothing is registered). A version number taken meanwhile by another registration of
    the same name is retried with the next one (only the savepoint is rolled back; the caller's writes stay)."""
    limits.check_name(name, "model name", MAX_NAME_LENGTH, NAME_LIMIT, pattern=NAME, rule=NAME_RULE)
    existing = session.exec(select(LoraModel).where(LoraModel.sha256 == artifact.sha256)).first()
    if existing:
        return existing
    with artifact_db.open_artifact(store, artifact) as f:  # a lost object: 404 naming the artifact
        header = read_header(f)
    if not lora_keys(header):
        raise InvalidInput(f"artifact {artifact.id} holds no tensors: not a LoRA")
    state = LoraState(initial_state)
    for _ in range(REGISTER_TRIES):
        version = next_version(session, name)
        row = LoraModel(sha256=artifact.sha256, name=name, version=version, filename=lora_filename(name, version),
                        state=state, base_model=base_model, trigger_words=trigger_words, training=training,
                        ss_metadata=training_metadata(header), artifact_id=artifact.id,
                        dataset_artifact_id=dataset_artifact_id, job_id=job_id, size=artifact.size)
        _begin(session)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # (name, version) or the same bytes, registered by someone else meanwhile
            # the savepoint rolled back has dropped the row
            existing = session.exec(select(LoraModel).where(LoraModel.sha256 == artifact.sha256)).first()
            if existing:
                return existing
            continue
        return row
    raise Conflict(f"could not register {name}: its next version number was taken {REGISTER_TRIES} times")


REGISTER_TRIES = 5


def _begin(session: Session) -> None:
    """Make sure the caller's transaction has begun in the database, so that a savepoint nests in it.

    SQLite's driver (pysqlite) sends BEGIN only before the first write: a savepoint taken before any write
    would itself be the outermost transaction, and releasing it would commit the row behind the caller's
    back. PostgreSQL's driver sends BEGIN before any first statement, the SAVEPOINT too."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        if raw is not None and not raw.in_transaction:
            conn.exec_driver_sql("BEGIN")


def next_version(session: Session, name: str) -> int:
    return (session.exec(select(func.max(LoraModel.version)).where(LoraModel.name == name)).one() or 0) + 1


def list_models(session: Session, name: str | None = None, state: str | None = None) -> list[LoraModel]:
    q = select(LoraModel).order_by(LoraModel.name, LoraModel.version)
    if name:
        q = q.where(LoraModel.name == name)
    if state:
        q = q.where(LoraModel.state == state)
    return list(session.exec(q))


def get_model(session: Session, ref: str) -> LoraModel:
    """By id, sha256 (or a prefix of 8+ hex digits), file name, ``name@vN`` or name (its newest version)."""
    name, _, ver = ref.partition("@v")
    if ver.isdigit():
        row = session.exec(select(LoraModel).where(LoraModel.name == name, LoraModel.version == int(ver))).first()
    else:
        conds = [LoraModel.id == ref, LoraModel.filename == ref, LoraModel.sha256 == ref]
        if len(ref) >= 8 and re.fullmatch(r"[0-9a-f]+", ref):
            conds.append(col(LoraModel.sha256).startswith(ref))
        row = session.exec(select(LoraModel).where(or_(*conds))).first()
        if row is None:
            row = session.exec(select(LoraModel).where(LoraModel.name == ref)
                               .order_by(col(LoraModel.version).desc())).first()
    if row is None:
        raise NotFound(f"unknown model {ref!r}")
    return row


def set_state(session: Session, ref: str, new: str) -> LoraModel:
    row = get_model(session, ref)
    previous, row.state = row.state, check_state_change(row.state, new)
    row.state_changed_at = now()
    session.add(row)
    audit.record(session, STATE_ACTIONS[row.state], row.filename, {"id": row.id, "sha256": row.sha256,
                                                                   "from": previous})
    session.commit()
    return row


# -- distribution ----------------------------------------------------------------------------------
def target_folder(server: ServerRow, settings: Settings) -> Path | None:
    """Where a server reads LoRAs from: a local worker its own models folder, any other server the shared
    models path (None when no shared path is configured)."""
    if server.source == "local":
        return settings.models_dir / LORA_FOLDER
    if settings.shared_models_dir:
        return settings.shared_models_dir / LORA_FOLDER
    return None


def _copy(store: ObjectStore, key: str, dest: Path) -> None:
    """Copy atomically: the server never lists a half-written file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    with store.open(key) as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(dest)


def distribute(session: Session, store: ObjectStore, settings: Settings, model: LoraModel,
               pool: Pool | None = None) -> dict[str, Any]:
    """Put the LoRA where every pool server reads it, then read their capabilities again.

    Returns (and records on the model) per server: the folder it was written to and whether the server
    lists it now, or why it was not distributed there."""
    result = copy_to_servers(session, store, settings, model, pool)
    session.commit()
    return result


def copy_to_servers(session: Session, store: ObjectStore, settings: Settings, model: LoraModel,
                    pool: Pool | None = None) -> dict[str, Any]:
    """``distribute`` in the caller's transaction (the caller commits). The capabilities probed here are
    recorded after the last server is done: no write is held while the files are copied and the servers
    are asked (a live pool server's check writes in a session of its own)."""
    from orchestrator.runtime.pool import probe

    art = artifact_db.get_artifact(session, model.artifact_id)
    written: dict[Path, str | None] = {}
    result: dict[str, Any] = {}
    probed: list[tuple[str, Capabilities]] = []
    for server in server_db.server_rows(session):
        folder = target_folder(server, settings)
        if folder is None:
            result[server.name] = {"ok": False, "error": "remote server and no MEDIALAB_SHARED_MODELS_DIR set"}
            continue
        dest = folder / model.filename
        if dest not in written:
            try:
                if not (dest.exists() and dest.stat().st_size == art.size):
                    _copy(store, art.key, dest)
                written[dest] = None
            except OSError as exc:
                written[dest] = str(exc)
        if written[dest]:
            result[server.name] = {"ok": False, "folder": str(folder), "error": written[dest]}
            continue
        live = pool.get(server.url) if pool else None
        try:
            if live is not None:
                pool.check(live, refresh=True)
                caps = live.caps
            else:
                client = ComfyClient(server.url, timeout=10)
                try:
                    caps = probe(client)
                finally:
                    client.close()
                probed.append((server.id, caps))
        except MediaLabError as exc:
            result[server.name] = {"ok": False, "folder": str(folder), "error": f"not reachable: {exc.message}"}
            continue
        listed = bool(caps and model.filename in caps.models.get(LORA_FOLDER, frozenset()))
        result[server.name] = {"ok": listed, "folder": str(folder),
                               **({} if listed else {"error": "written, but the server does not list it: is the "
                                                     "folder in its extra_model_paths.yaml?"})}
    for server_id, caps in probed:
        server_db.record_probe(session, server_id, caps)
    model.distribution = {"at": now().isoformat(), "servers": result}
    session.add(model)
    return result
