"""Operations on the database shared by the API, the CLI and the dispatcher."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from PIL import Image, UnidentifiedImageError
from sqlalchemy import String, cast, func, or_, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from custom_nodes import urls
from orchestrator import audit, editor, limits, media, sandbox, server_urls
from orchestrator import templates as tpl
from orchestrator.capabilities import Capabilities, Requirements
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.jobs import JobState, check_transition
from orchestrator.models import (
    Artifact,
    ArtifactTag,
    Attempt,
    Job,
    JobEvent,
    JobInput,
    LoraModel,
    ServerRow,
    TemplateVersionRow,
    now,
)
from orchestrator.placement import ServerView, unrunnable_reason
from orchestrator.settings import Settings, get_settings
from orchestrator.validation import validate_graph
from storage import ObjectStore

if TYPE_CHECKING:
    from orchestrator.pool import Pool


# -- templates -------------------------------------------------------------------------------------
def sync_templates(session: Session, versions: list[tpl.TemplateVersion]) -> None:
    """Record every version found on disk; a published version whose content changed is refused."""
    for t in versions:
        row = session.exec(select(TemplateVersionRow).where(
            TemplateVersionRow.name == t.name, TemplateVersionRow.version == t.version)).first()
        if row is None:
            session.add(TemplateVersionRow(
                name=t.name, version=t.version, content_hash=t.content_hash, title=t.manifest.title,
                kind=t.manifest.kind, manifest=t.manifest.model_dump(mode="json"), graph=t.graph,
                source="library"))
        elif row.content_hash != t.content_hash and row.source == "published":
            raise Conflict(f"comfy_workflows/{t.name}/v{t.version} collides with a version published through the "
                           "API; give the folder the next free version number")
        elif row.content_hash != t.content_hash:
            raise Conflict(f"template {t.ref} changed after it was published (recorded {row.content_hash[:12]}, "
                           f"on disk {t.content_hash[:12]}); versions are immutable: add a new v<N> folder")
    session.commit()


def template_from_row(row: TemplateVersionRow) -> tpl.TemplateVersion:
    return tpl.TemplateVersion(name=row.name, version=row.version, graph=row.graph,
                               manifest=tpl.Manifest.model_validate(row.manifest),
                               content_hash=row.content_hash, deprecated=row.deprecated)


def check_publish(name: str, graph: dict[str, Any], manifest: dict[str, Any] | None, title: str | None,
                  description: str, settings: Settings) -> None:
    """A publish request within the limits: the name and title are names (``max_name_length``), the
    description a string (``max_string_length``); graph and manifest hold only finite numbers, 64-bit
    integers and strings without NUL (their size is bounded by ``max_body_bytes``)."""
    limits.check_name(name, "template name", settings.max_name_length)
    if title is not None:
        limits.check_name(title, "title", settings.max_name_length)
    limits.check_json(description, "description", max_string=limits.Limit.setting(settings, "max_string_length"))
    limits.check_json(graph, "graph")
    limits.check_json(manifest, "manifest")


def publish_template(session: Session, pool: Pool | None, name: str, graph: dict[str, Any],
                     manifest: dict[str, Any] | None = None, *, title: str | None = None, kind: str = "image",
                     description: str = "", api_key_id: str | None = None,
                     settings: Settings | None = None) -> TemplateVersionRow:
    """Publish the next version of a template from an API-format graph or an editor-format workflow.

    An editor-format workflow (what ComfyUI's Save writes) is converted to the API format with the node
    definitions of a live pool server. Without a manifest, parameters come from the node pack's parameter
    nodes and outputs from the save nodes; a workflow without parameter nodes that ``templates open`` wrote
    keeps the manifest of the version it was opened from (bindings are by title). The graph is checked
    against the node definitions of a live pool server, and every node class and model it needs must exist
    on some server. A published version is immutable. Before any of that, the graph with its defaults bound
    must stay in the sandbox (``sandbox.check_graph``: no file input leaving ComfyUI's folders, no URL the
    URL rule refuses). First of all, the request is bounded (``check_publish``).
    """
    check_publish(name, graph, manifest, title, description, settings or get_settings())
    object_info, origin = None, None
    if editor.is_editor_format(graph):
        origin = ((graph.get("extra") or {}).get("medialab") or {}).get("template")
        origin_version = ((graph.get("extra") or {}).get("medialab") or {}).get("version")
        if pool is None:
            raise InvalidInput("an editor-format workflow needs a live ComfyUI server's node definitions to be "
                               "converted; publish with a pool, or export the API format (Workflow > Export (API))")
        object_info = pool.object_info()
        graph = editor.to_api(graph, object_info)
    if manifest is None:
        derived, titled = tpl.manifest_from_graph(graph, title or name, kind, description)
        if not derived["parameters"] and origin:
            source, _t = get_template(session, origin, origin_version)
            manifest = tpl.defaults_from_graph({**source.manifest, **({"title": title} if title else {})}, graph)
        else:
            manifest, graph = derived, titled
    rows = template_rows(session, name)
    version = max((r.version for r in rows), default=0) + 1
    t = tpl.from_dicts(name, version, manifest, graph)
    same = next((r for r in rows if r.content_hash == t.content_hash), None)
    if same:
        raise Conflict(f"{name}@v{same.version} has exactly this content already")
    values = {p.name: p.default if p.default is not None else f"sha256/00/{p.name}" for p in t.manifest.parameters}
    if pool is not None and object_info is None:
        object_info = pool.object_info()
    defs = sandbox.Definitions.from_object_info(object_info) if object_info is not None \
        else sandbox_definitions(session, None)
    check_sandbox(tpl.bind(t, values), defs, settings, skip=bound_inputs(t, lambda p: p.type in tpl.ARTIFACT_TYPES
                                                                          or p.default is None))
    if pool is not None:
        problems = validate_graph(tpl.bind(t, values), object_info)
        if problems:
            raise InvalidInput(f"{t.ref} does not validate against the pool's node definitions: "
                               + "; ".join(problems), problems=problems)
        pool.check_runnable(requirements(t, values))
    row = TemplateVersionRow(name=name, version=version, content_hash=t.content_hash, title=t.manifest.title,
                             kind=t.manifest.kind, manifest=manifest, graph=graph, source="published",
                             published_by=api_key_id)
    session.add(row)
    audit.record(session, "template.publish", f"{name}@v{version}", {"content_hash": t.content_hash})
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{name}@v{version} was published by someone else just now; publish again") from exc
    return row


def template_workflow(session: Session, name: str, version: int | None, object_info: dict[str, Any]) -> dict[str, Any]:
    """A version's graph as an editor-format workflow, to open (Workflow > Open) and edit in ComfyUI."""
    _row, t = get_template(session, name, version)
    defaults = {p.name: p.default for p in t.manifest.parameters if p.default is not None}
    workflow = editor.to_editor(tpl.bind(t, defaults), object_info)  # the artist sees the defaults
    workflow["extra"].setdefault("medialab", {}).update({"template": t.name, "version": t.version,
                                                          "content_hash": t.content_hash})
    return workflow


def set_deprecated(session: Session, name: str, version: int, deprecated: bool = True) -> TemplateVersionRow:
    """A deprecated version still runs when named, but is no longer the default."""
    row, _t = get_template(session, name, version)
    row.deprecated = deprecated
    session.add(row)
    audit.record(session, "template.deprecate", f"{name}@v{version}", {"deprecated": deprecated})
    session.commit()
    return row


def template_rows(session: Session, name: str | None = None) -> list[TemplateVersionRow]:
    q = select(TemplateVersionRow).order_by(TemplateVersionRow.name, TemplateVersionRow.version)
    if name:
        q = q.where(TemplateVersionRow.name == name)
    return list(session.exec(q))


def get_template(session: Session, name: str, version: int | None = None) -> tuple[TemplateVersionRow,
                                                                                      tpl.TemplateVersion]:
    rows = template_rows(session)
    t = tpl.pick([template_from_row(r) for r in rows], name, version)
    row = next(r for r in rows if r.name == t.name and r.version == t.version)
    return row, t


# -- artifacts -------------------------------------------------------------------------------------
SNIFF_HEAD = 1 << 20  # bytes read to recognise an image by its header
VERIFY_MAX = 64 << 20  # an image up to this size is verified whole; a bigger one on its header alone


def sniff(f: BinaryIO, filename: str) -> tuple[str, int | None, int | None]:
    """(content type, width, height): images by decoding them, anything else by its name.

    Reads a bounded head first: an object store's stream cannot seek, and PIL would read all of a
    non-seekable file into memory (a 2 GB video) just to find it is not an image."""
    try:
        head = f.read(SNIFF_HEAD)
        with Image.open(io.BytesIO(head)) as im:
            fmt, (w, h) = im.format or "octet-stream", im.size
        data = head + (f.read(VERIFY_MAX - len(head)) if len(head) == SNIFF_HEAD else b"")
        if len(data) < VERIFY_MAX:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        return f"image/{fmt.lower()}", w, h
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if guessed.startswith("image/"):  # a name is no proof: only bytes that decode are an image
        return "application/octet-stream", None, None
    return guessed, None, None


@contextmanager
def checked_upload(data: bytes | Iterable[bytes] | BinaryIO | Path, filename: str, settings: Settings | None = None,
                   ) -> Iterator[tuple[media.Spooled, media.MediaInfo]]:
    """An upload spooled to a local file while it is hashed, then inspected against the limits (``media``):
    refused (413 over a limit, 422 for an image that does not decode) before anything is stored. Every path
    that stores uploaded bytes (inputs, a trainer's outputs) goes through here, then ``store.put_file``.
    Spooled under ``<home>/spool`` (without ``settings``: the system's temporary folder, default limits)."""
    caps = media.MediaLimits.of(settings or get_settings())
    with media.spooled(data, caps, settings.home / "spool" if settings else None) as spool:
        yield spool, media.inspect(spool.path, filename, caps)


def store_input(session: Session, store: ObjectStore, data: bytes | Iterable[bytes] | BinaryIO | Path,
                filename: str, tags: Iterable[str] = (), settings: Settings | None = None) -> Artifact:
    """Store an uploaded input; the same bytes uploaded twice give the same artifact (tags are added).

    Tags and file name are checked first, the bytes are inspected before they are stored (``checked_upload``):
    a refused upload leaves no object and no row. ``settings``: the limits (default: ``get_settings()``).
    No transaction is open while the bytes are spooled, inspected and stored (a multi-GB upload must not hold
    a pooled database connection): this use case commits what the session holds first, and its one read
    before the bytes are stored is a transaction of its own; the rows are written afterwards."""
    tags = limits.check_tags(tags, settings or get_settings())
    filename = media.check_filename(filename) or "upload"
    session.commit()  # the caller's reads end here: their connection goes back to the pool
    with checked_upload(data, filename, settings) as (spool, info):
        origin = f"input:{spool.sha256}"
        existing = session.exec(select(Artifact).where(Artifact.origin == origin)).first()
        session.commit()  # a short read: the same bytes are not stored twice, and no connection is held below
        if existing:
            add_tags(session, existing.id, tags)
            return existing
        obj = store.put_file(spool.path, spool.sha256)
    art = Artifact(origin=origin, key=obj.key, sha256=obj.sha256, size=obj.size, content_type=info.content_type,
                   filename=filename, role="input", width=info.width, height=info.height)
    session.add(art)
    try:
        session.flush()
    except IntegrityError:  # the same bytes uploaded at the same moment: theirs is the artifact
        session.rollback()
        art = session.exec(select(Artifact).where(Artifact.origin == origin)).one()
    add_tags(session, art.id, tags)
    return art


def add_tags(session: Session, artifact_id: str, tags: Iterable[str]) -> None:
    have = set(artifact_tags(session, artifact_id))
    for tag in {t.strip() for t in tags if t.strip()} - have:
        session.add(ArtifactTag(artifact_id=artifact_id, tag=tag))
    session.commit()


def artifact_tags(session: Session, artifact_id: str) -> list[str]:
    return sorted(session.exec(select(ArtifactTag.tag).where(ArtifactTag.artifact_id == artifact_id)))


def list_artifacts(session: Session, job: str | None = None, template: str | None = None, tag: str | None = None,
                   role: str | None = None, limit: int = 50, offset: int = 0) -> list[Artifact]:
    q = select(Artifact).order_by(col(Artifact.created_at).desc()).limit(limit).offset(offset)
    if job:
        q = q.where(Artifact.job_id == job)
    if template:
        q = q.where(Artifact.template == template)
    if role:
        q = q.where(Artifact.role == role)
    if tag:
        q = q.where(col(Artifact.id).in_(select(ArtifactTag.artifact_id).where(ArtifactTag.tag == tag)))
    return list(session.exec(q))


def delete_artifact(session: Session, store: ObjectStore, artifact_id: str) -> Artifact:
    """Delete an artifact (and its bytes when no other artifact has the same content). An artifact that a
    job reads is kept: its lineage would break."""
    art = get_artifact(session, artifact_id)
    readers = list(session.exec(select(JobInput.job_id).where(JobInput.artifact_id == artifact_id).limit(6)))
    if readers:
        raise Conflict(f"artifact {artifact_id} is an input of job(s) {', '.join(readers[:5])}"
                       f"{' and more' if len(readers) > 5 else ''}; it is kept for their lineage")
    models = list(session.exec(select(LoraModel.filename).where(or_(
        LoraModel.artifact_id == art.id, LoraModel.dataset_artifact_id == art.id)).limit(6)))
    if models:
        raise Conflict(f"artifact {artifact_id} is the file or the dataset of registered LoRA(s) "
                       f"{', '.join(models[:5])}; withdraw them instead", models=models[:5])
    derived = list(session.exec(select(Artifact.id, Artifact.role).where(
        cast(col(Artifact.input_artifacts), String).like(f'%"{art.id}"%')).limit(6)))
    if derived:
        raise Conflict(f"artifact {artifact_id} is in the lineage of {len(derived)} artifact(s) "
                       f"({', '.join(f'{r} {i}' for i, r in derived[:5])}); it is kept for them",
                       artifacts=[i for i, _r in derived[:5]])
    session.execute(sql_delete(ArtifactTag).where(col(ArtifactTag.artifact_id) == art.id))  # tags first: they
    session.execute(sql_delete(Artifact).where(col(Artifact.id) == art.id))  # refer to the artifact
    shared = session.exec(select(func.count()).where(Artifact.sha256 == art.sha256, Artifact.id != art.id)).one()
    audit.record(session, "artifact.delete", art.id, {"sha256": art.sha256, "filename": art.filename,
                                                     "role": art.role})
    try:
        session.commit()
    except IntegrityError as exc:  # something came to refer to it meanwhile
        session.rollback()
        raise Conflict(f"artifact {artifact_id} is referred to by a row written just now; it is kept") from exc
    if not shared:
        store.delete(art.key)
    return art


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    art = session.get(Artifact, artifact_id)
    if art is None:
        raise NotFound(f"unknown artifact {artifact_id[:200]}")
    return art


def object_lost(art: Artifact) -> NotFound:
    """The error of an artifact whose object the store no longer has (deleted or lost behind our back)."""
    return NotFound(f"artifact {art.id} ({art.filename}): its bytes are missing from the object store "
                    f"(key {art.key})", artifact=art.id)


def open_artifact(store: ObjectStore, art: Artifact) -> BinaryIO:
    """The artifact's bytes for reading; NotFound (404, naming it) when the store has lost its object."""
    try:
        return store.open(art.key)
    except FileNotFoundError as exc:
        raise object_lost(art) from exc


def job_outputs(session: Session, job_id: str) -> list[Artifact]:
    return list(session.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.role == "output")
                             .order_by(Artifact.output_name, Artifact.filename)))


# -- the sandbox ----------------------------------------------------------------------------------
_DEFS: tuple[list[Any], sandbox.Definitions] | None = None  # the last merge, with the capabilities it came from


def sandbox_definitions(session: Session, pool: Pool | None) -> sandbox.Definitions:
    """What the pool's servers (live, or as recorded without a pool) know of their node classes' file inputs."""
    global _DEFS
    caps = [srv.caps for srv in pool.servers] if pool is not None else \
        [Capabilities.from_json(r.capabilities) for r in server_rows(session)]
    cached = _DEFS
    if cached is not None and len(cached[0]) == len(caps) and all(a is b for a, b in zip(cached[0], caps, strict=True)):
        return cached[1]
    defs = sandbox.Definitions.merge(caps)
    if pool is not None:
        _DEFS = (caps, defs)  # live capabilities are replaced, never changed, when a server is probed again
    return defs


def url_policy(settings: Settings | None = None) -> urls.UrlPolicy:
    st = settings or get_settings()
    try:
        return sandbox.url_policy(st.url_allowlist, st.s3_endpoint if st.storage == "s3" else None, st.s3_secure,
                                  st.url_private_ok, st.url_max_bytes, st.url_timeout_s, st.s3_bucket)
    except urls.UrlRefused as exc:
        raise InvalidInput(f"setting url_allowlist (MEDIALAB_URL_ALLOWLIST): {exc}") from exc


def bound_inputs(t: tpl.TemplateVersion, which: Any) -> set[tuple[str, str]]:
    """(node id, input) of the parameters ``which(p)`` selects."""
    titles = tpl.nodes_by_title(t.graph)
    return {(titles[p.bind.node], p.bind.input) for p in t.manifest.parameters if which(p)}


def check_sandbox(graph: dict[str, Any], defs: sandbox.Definitions, settings: Settings | None = None,
                  skip: Iterable[tuple[str, str]] = (), resolve: bool = True) -> None:
    """Refuse (422, naming node, input and rule) a graph that would read outside ComfyUI's folders or fetch
    a URL the rule refuses; with ``resolve`` the URLs' host names are looked up and every address checked."""
    policy = url_policy(settings)
    found = sandbox.check_graph(graph, defs, policy, skip)
    problems = list(found.problems)
    for where, target in found.urls if resolve else ():
        try:
            urls.check_addresses(target, urls.resolve(target.host, target.port), policy)
        except urls.UrlRefused as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise InvalidInput("the graph leaves the sandbox: " + "; ".join(problems), problems=problems)


# -- jobs ------------------------------------------------------------------------------------------
def check_artifact_params(session: Session, t: tpl.TemplateVersion, values: dict[str, Any]) -> None:
    for p in t.manifest.parameters:
        if p.type not in tpl.ARTIFACT_TYPES or values.get(p.name) is None:
            continue
        art = session.get(Artifact, values[p.name])
        if art is None:
            raise InvalidInput(f"parameter {p.name}: unknown input artifact {values[p.name]!r}",
                               errors=[{"param": p.name, "message": "unknown artifact"}])
        if not art.content_type.startswith(f"{p.type.value}/"):
            raise InvalidInput(f"parameter {p.name}: artifact {art.id} is {art.content_type}, "
                               f"not an {p.type.value}", errors=[{"param": p.name, "message": "wrong type"}])


def requirements(t: tpl.TemplateVersion, values: dict[str, Any]) -> Requirements:
    """The node classes and model files a job needs from the server that runs it."""
    graph = tpl.bind(t, values)
    refs = tpl.model_refs(graph)
    refs |= {(p.folder, values[p.name]) for p in t.manifest.parameters
             if p.type == tpl.ParamType.model and p.folder and values.get(p.name)}
    return Requirements.of_graph(graph, refs, tpl.model_patterns(graph))


def create_job(session: Session, row: TemplateVersionRow, t: tpl.TemplateVersion, values: dict[str, Any],
               *, api_key_id: str | None = None, priority: int = 0, timeout_s: float | None = None,
               idempotency_key: str | None = None, request_hash: str | None = None) -> Job:
    """Write the job (QUEUED) and its first event; params must be validated already."""
    job = Job(template_version_id=row.id, template=t.name, version=t.version, params=values,
              priority=priority, timeout_s=timeout_s or t.manifest.timeout_s, api_key_id=api_key_id,
              idempotency_key=idempotency_key, request_hash=request_hash)
    session.add(job)
    session.add_all(JobInput(job_id=job.id, artifact_id=values[p.name]) for p in t.manifest.parameters
                    if p.type in tpl.ARTIFACT_TYPES and values.get(p.name))
    session.add(JobEvent(job_id=job.id, kind="state", state=JobState.QUEUED, reason="submitted",
                         data={"template": t.ref, "hash": t.content_hash}))
    audit.record(session, "job.submit", job.id, {"kind": job.kind, "template": t.ref, "priority": priority})
    session.commit()
    return job


def validate_job(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
                 version: int | None = None, settings: Settings | None = None,
                 ) -> tuple[TemplateVersionRow, tpl.TemplateVersion, dict[str, Any]]:
    """Everything that can be known before dispatch; returns the template and the validated parameters.

    Refused here: unknown template or version, bad parameters, unknown or wrong-type input artifacts,
    and node classes or models that no server of the pool has (ComfyUI would only notice at run time),
    and LoRAs of the model registry that are not approved. Without a live ``pool`` (``medialab submit``)
    the servers' recorded capabilities are checked by the same rule, so every path refuses the same jobs.
    The graph bound with the caller's values must stay in the sandbox (a string parameter bound to a file
    input is how a caller would pick a path; URL values are checked by the URL rule).
    """
    from orchestrator.training.registry import check_usable

    caps = settings or get_settings()
    limits.check_name(template, "template name", caps.max_name_length)
    limits.check_params(params, caps)  # counts, lengths and numbers before pydantic sees them
    row, t = get_template(session, template, version)
    values = tpl.validate_params(t, params)
    check_artifact_params(session, t, values)
    check_sandbox(tpl.bind(t, values), sandbox_definitions(session, pool), settings,
                  skip=bound_inputs(t, lambda p: p.type in tpl.ARTIFACT_TYPES))
    req = requirements(t, values)
    check_usable(session, req.models)  # a registered LoRA must be approved
    if pool is not None:
        pool.check_runnable(req)
    else:
        check_runnable_recorded(session, req)
    return row, t, values


def recorded_views(rows: Iterable[ServerRow]) -> list[ServerView]:
    """The registry as placement sees it, from the health and capabilities recorded in the database."""
    return [ServerView(r.id, r.url, r.healthy, r.state == "active", Capabilities.from_json(r.capabilities))
            for r in rows]


def check_runnable_recorded(session: Session, req: Requirements) -> None:
    """``Pool.check_runnable`` against the recorded capabilities (for a process without a live pool). Nothing
    is refused while they are not known: no server registered (``serve`` and ``run`` start a local worker
    then), or an active server not probed yet (the live pool decides once it has probed it)."""
    from orchestrator.pool import MissingCapability

    views = recorded_views(server_rows(session))
    known = bool(views) and all(v.caps is not None for v in views if v.active)
    reason = unrunnable_reason(req, views) if known else None
    if reason:
        raise MissingCapability(reason)


def idempotent_job(session: Session, api_key_id: str | None, idempotency_key: str, request_hash: str) -> Job | None:
    """The job an earlier submit with this key's ``Idempotency-Key`` made, if any; the same key with another
    body is refused (as Comfy API v2 does)."""
    job = session.exec(select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == idempotency_key)).first()
    if job is not None and job.request_hash != request_hash:
        raise InvalidInput(f"Idempotency-Key {idempotency_key!r} was used for job {job.id} with another request "
                           "body; use a new key for a new request")
    return job


def check_job_fields(priority: int, timeout_s: float | None, settings: Settings) -> None:
    """What every path that queues a job (API, CLI, trainings) checks besides the parameters."""
    low, high = limits.PRIORITY_RANGE
    if not isinstance(priority, int) or not low <= priority <= high:
        raise InvalidInput(f"priority {priority!r} is outside {low}..{high} (limits.PRIORITY_RANGE)",
                           limit="limits.PRIORITY_RANGE", value=high)
    limits.check_timeout(timeout_s, settings)


def submit_job(session: Session, pool: Pool | None, template: str, params: dict[str, Any],
               version: int | None = None, settings: Settings | None = None, **job_fields: Any) -> Job:
    """Validate, then write the job as QUEUED (a job is always written before it is dispatched). With an
    ``idempotency_key`` (and the ``request_hash`` of the body), a repeated submit returns the first job."""
    check_job_fields(job_fields.get("priority", 0), job_fields.get("timeout_s"), settings or get_settings())
    if job_fields.get("idempotency_key"):
        job = idempotent_job(session, job_fields.get("api_key_id"), job_fields["idempotency_key"],
                             job_fields["request_hash"])
        if job is not None:
            return job
    row, t, values = validate_job(session, pool, template, params, version, settings)
    try:
        return create_job(session, row, t, values, **job_fields)
    except IntegrityError:
        session.rollback()
        job = idempotent_job(session, job_fields.get("api_key_id"), job_fields.get("idempotency_key") or "",
                             job_fields.get("request_hash") or "") if job_fields.get("idempotency_key") else None
        if job is None:
            raise
        return job  # a concurrent submit with the same Idempotency-Key won


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id}")
    return job


def list_jobs(session: Session, state: JobState | None = None, template: str | None = None,
              limit: int = 50, offset: int = 0) -> list[Job]:
    q = select(Job).order_by(col(Job.created_at).desc()).limit(limit).offset(offset)
    if state:
        q = q.where(Job.state == state)
    if template:
        q = q.where(Job.template == template)
    return list(session.exec(q))


def transition(session: Session, job_id: str, current: JobState, new: JobState, reason: str,
               data: dict[str, Any] | None = None, commit: bool = True, **fields: Any) -> bool:
    """Move a job from ``current`` to ``new`` if nobody else moved it first, with its event.

    The conditional UPDATE makes this safe between threads and between orchestrator replicas. With
    ``commit=False`` the caller commits (several changes in one transaction).
    """
    check_transition(current, new)
    values: dict[str, Any] = {"state": new, **fields}
    if new == JobState.RUNNING:
        values.setdefault("started_at", now())
    if new.terminal:
        values.setdefault("finished_at", now())
    res = session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == current).values(**values))
    if res.rowcount != 1:
        if commit:
            session.rollback()
        return False
    session.add(JobEvent(job_id=job_id, kind="state", state=new, reason=reason, data=data))
    if commit:
        session.commit()
    return True


def add_event(session: Session, job_id: str, kind: str, reason: str = "", data: dict[str, Any] | None = None,
              **job_fields: Any) -> None:
    if job_fields:
        session.execute(update(Job).where(col(Job.id) == job_id).values(**job_fields))
    session.add(JobEvent(job_id=job_id, kind=kind, reason=reason, data=data))
    session.commit()


def cancel_job(session: Session, job_id: str) -> Job:
    """QUEUED -> CANCELLED at once; a RUNNING job is flagged and its dispatcher interrupts it by prompt_id."""
    job = get_job(session, job_id)
    if job.state.terminal:
        raise Conflict(f"job {job_id} is already {job.state.value}")
    cancelled = job.state == JobState.QUEUED and transition(session, job_id, JobState.QUEUED, JobState.CANCELLED,
                                                            "cancelled while queued", commit=False)
    audit.record(session, "job.cancel", job_id, {"kind": job.kind, "outcome": "cancelled" if cancelled
                                                 else "cancel requested"})
    if cancelled:
        session.commit()
    else:  # running (or taken by a dispatcher just now): its dispatcher or trainer stops it
        add_event(session, job_id, "info", "cancel requested", cancel_requested=True)
    session.expire_all()
    return get_job(session, job_id)


def job_attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))


def events_after(session: Session, job_id: str, after_id: int = 0) -> list[JobEvent]:
    return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id, col(JobEvent.id) > after_id)
                             .order_by(col(JobEvent.id))))


def queued_candidates(session: Session, limit: int = 100) -> list[Job]:
    """QUEUED jobs that may be dispatched now, locked for this transaction (PostgreSQL: FOR UPDATE SKIP
    LOCKED, so replicas never consider the same job; SQLite has one writer and ignores the clause)."""
    q = (select(Job).where(Job.kind == "comfy", Job.state == JobState.QUEUED,
                           or_(col(Job.run_after).is_(None), col(Job.run_after) <= now()))
         .order_by(col(Job.priority).desc(), col(Job.queued_at)).limit(limit).with_for_update(skip_locked=True))
    return list(session.exec(q))


def running_by_key(session: Session) -> dict[str | None, int]:
    q = select(Job.api_key_id, func.count()).where(Job.state == JobState.RUNNING).group_by(Job.api_key_id)
    return dict(session.exec(q).all())


def inflight_by_server(session: Session) -> dict[str, int]:
    q = select(Attempt.server, func.count()).where(Attempt.state == JobState.RUNNING).group_by(Attempt.server)
    return dict(session.exec(q).all())


def start_attempt(session: Session, job: Job, server: str, owner: str | None, lease_s: float,
                  comfy_version: str | None = None, reason: str = "dispatched") -> Attempt | None:
    """Claim a QUEUED job for a server: RUNNING + a new attempt owned by ``owner``. The caller commits.
    None when another dispatcher got it first."""
    number = session.exec(select(func.count()).where(Attempt.job_id == job.id)).one() + 1
    attempt = Attempt(job_id=job.id, number=number, server=server, owner=owner, comfy_version=comfy_version,
                      lease_until=now() + timedelta(seconds=lease_s))
    if not transition(session, job.id, JobState.QUEUED, JobState.RUNNING, reason,
                      {"attempt": attempt.id, "number": number, "server": server}, commit=False,
                      cancel_requested=False):
        return None
    session.add(attempt)
    return attempt


def finish_attempt(session: Session, attempt_id: str, owner: str | None, state: JobState,
                   error: dict[str, Any] | None, *, counts: bool = True, abandoned: bool = False) -> bool:
    """End an attempt this owner still holds (the caller commits); False when it lost the lease.
    ``counts=False``: a dependency of ours failed, not the job (not counted against its max attempts);
    ``abandoned``: its server did not answer, so its prompt may still be there (removed once it answers)."""
    res = session.execute(update(Attempt).where(col(Attempt.id) == attempt_id, col(Attempt.state) == JobState.RUNNING,
                                                col(Attempt.owner) == owner)
                          .values(state=state, error=error, finished_at=now(), counts=counts, abandoned=abandoned))
    return res.rowcount == 1


def counted_attempts(session: Session, job_id: str) -> int:
    """The job's attempts that count against its max attempts (all but those a dependency of ours ended)."""
    return session.exec(select(func.count()).where(Attempt.job_id == job_id, col(Attempt.counts).is_(True))).one()


def waits_in_a_row(session: Session, job_id: str, before: int) -> int:
    """How many of the job's attempts just before number ``before`` ended in a row waiting for a dependency
    (counts=False): the backoff of the next wait grows with it."""
    flags = session.exec(select(Attempt.counts).where(Attempt.job_id == job_id, Attempt.number < before)
                         .order_by(col(Attempt.number).desc()).limit(64)).all()
    return next((i for i, counts in enumerate(flags) if counts), len(flags))


def heartbeat(session: Session, owner: str, lease_s: float, attempt_ids: Iterable[str] | None = None) -> int:
    """Renew the leases of this process's RUNNING attempts; with ``attempt_ids`` only of those (the ones a
    runner of this process is following: an attempt whose runner ended without ending it lapses and is
    adopted and reconciled like a crashed process's)."""
    q = update(Attempt).where(col(Attempt.owner) == owner, col(Attempt.state) == JobState.RUNNING)
    if attempt_ids is not None:
        ids = list(attempt_ids)
        if not ids:
            return 0
        q = q.where(col(Attempt.id).in_(ids))
    res = session.execute(q.values(lease_until=now() + timedelta(seconds=lease_s)))
    session.commit()
    return res.rowcount


def abandoned_attempts(session: Session, server: str) -> list[Attempt]:
    """Ended attempts whose prompt may still sit on ``server`` (it did not answer when they ended)."""
    return list(session.exec(select(Attempt).where(Attempt.server == server, col(Attempt.abandoned).is_(True),
                                                   Attempt.state != JobState.RUNNING)))


def clear_abandoned(session: Session, attempt_ids: Iterable[str]) -> None:
    ids = list(attempt_ids)
    if ids:
        session.execute(update(Attempt).where(col(Attempt.id).in_(ids)).values(abandoned=False))
        session.commit()


def adopt_orphans(session: Session, owner: str, lease_s: float) -> list[Attempt]:
    """RUNNING attempts whose owner stopped renewing its lease (crashed), taken over by ``owner``.
    Training claims (server ``trainer:<name>``) are not adopted: the training lease loop takes them back."""
    adopted = []
    stale = session.exec(select(Attempt).where(Attempt.state == JobState.RUNNING,
                                               ~col(Attempt.server).startswith("trainer:"),
                                               or_(col(Attempt.lease_until).is_(None),
                                                   col(Attempt.lease_until) < now()))).all()
    for a in stale:
        res = session.execute(update(Attempt).where(col(Attempt.id) == a.id, col(Attempt.state) == JobState.RUNNING,
                                                    col(Attempt.lease_until) == a.lease_until)
                              .values(owner=owner, lease_until=now() + timedelta(seconds=lease_s)))
        if res.rowcount == 1:
            session.add(JobEvent(job_id=a.job_id, kind="info", reason=f"attempt {a.number} adopted after its "
                                 f"orchestrator stopped", data={"attempt": a.id, "previous_owner": a.owner}))
            adopted.append(a)
    session.commit()
    return adopted


# -- servers ---------------------------------------------------------------------------------------
def server_rows(session: Session) -> list[ServerRow]:
    return list(session.exec(select(ServerRow).order_by(ServerRow.name)))


def get_server(session: Session, ref: str) -> ServerRow:
    """A server by id, name or URL (in any spelling of its canonical form)."""
    url = server_urls.canonical(ref) or ref.rstrip("/")
    row = session.exec(select(ServerRow).where(or_(ServerRow.id == ref, ServerRow.name == ref,
                                                   ServerRow.url == url))).first()
    if row is None:
        raise NotFound(f"unknown server {server_urls.redact(ref[:200])!r}")
    return row


def register_server(session: Session, url: str, name: str | None = None, source: str = "api",
                    settings: Settings | None = None) -> ServerRow:
    """Add a server (or return it if this URL is registered already, in any spelling of its canonical form).

    The URL is validated before anything is stored (``server_urls.parse_server_url``) and the name is checked
    (``max_name_length``, printable). A URL that reaches a registered server by another name (localhost vs
    127.0.0.1) is refused (409, naming that server): two rows for one ComfyUI would count its capacity twice."""
    max_name = (settings or get_settings()).max_name_length
    su = server_urls.parse_server_url(url)
    if name is not None:
        limits.check_name(name, "server name", max_name)
        if not name.strip():
            raise InvalidInput("a server name is not empty")
    row = session.exec(select(ServerRow).where(ServerRow.url == su.url)).first()
    if row:
        return row
    name = name or limits.check_name(su.default_name, f"server name {su.default_name[:40]!r}... (from the URL: "
                                     "give a shorter one)", max_name)
    if session.exec(select(ServerRow).where(ServerRow.name == name)).first():
        raise Conflict(f"a server named {name!r} exists already")
    registered = []
    for other in server_rows(session):
        parsed = server_urls.canonical(other.url)
        if parsed is not None:
            registered.append((other.name, server_urls.parse_server_url(parsed)))
    if registered:
        resolved: dict[str, frozenset[str]] = {}

        def addresses(host: str) -> frozenset[str]:
            if host not in resolved:
                resolved[host] = server_urls.resolve(host)
            return resolved[host]

        same = server_urls.duplicate_of(su, addresses(su.host), [(n, u, addresses(u.host)) for n, u in registered
                                                                 if (u.port, u.path) == (su.port, su.path)])
        if same is not None:
            raise Conflict(f"{su.shown} is server {same!r} under another name (the same address, port and path); "
                           f"use {same!r}, or remove it first", server=same)
    row = ServerRow(name=name, url=su.url, source=source)
    session.add(row)
    audit.record(session, "server.add", row.name, {"id": row.id, "url": su.shown, "source": source})
    try:
        session.commit()
    except IntegrityError as exc:  # registered by someone else at the same moment
        session.rollback()
        raise Conflict(f"server {name!r} ({su.shown}) was registered by someone else just now") from exc
    return row


SERVER_STATE_ACTIONS = {"draining": "server.drain", "active": "server.activate"}


def set_server_state(session: Session, ref: str, state: str) -> ServerRow:
    """``state``: draining or active (a key of ``SERVER_STATE_ACTIONS``)."""
    action = SERVER_STATE_ACTIONS[state]
    row = get_server(session, ref)
    row.state = state
    session.add(row)
    audit.record(session, action, row.name, {"id": row.id})
    session.commit()
    return row


def remove_server(session: Session, ref: str) -> ServerRow:
    row = get_server(session, ref)
    busy = inflight_by_server(session).get(row.url, 0)
    if busy:
        raise Conflict(f"server {row.name} has {busy} job(s) in flight: drain it and wait, then remove it")
    session.delete(row)
    audit.record(session, "server.remove", row.name, {"id": row.id, "url": row.url})
    session.commit()
    return row


def record_probe(session: Session, server_id: str, caps: Capabilities) -> None:
    session.execute(update(ServerRow).where(col(ServerRow.id) == server_id).values(
        capabilities=caps.to_json(), refreshed_at=now(), healthy=True, last_seen=now(), last_error=None))
    session.commit()


def record_health(session: Session, server_id: str, healthy: bool, error: str | None) -> None:
    values: dict[str, Any] = {"healthy": healthy, "last_error": error}
    if healthy:
        values["last_seen"] = now()
    session.execute(update(ServerRow).where(col(ServerRow.id) == server_id).values(**values))
    session.commit()


def current_jobs(session: Session) -> dict[str, list[str]]:
    """Server URL -> ids of the jobs running there."""
    out: dict[str, list[str]] = {}
    for a in session.exec(select(Attempt).where(Attempt.state == JobState.RUNNING)):
        out.setdefault(a.server, []).append(a.job_id)
    return out


def requeue(session: Session, job_id: str, reason: str, delay_s: float) -> bool:
    """A RUNNING job back to QUEUED after a transient failure, not dispatched before ``delay_s``."""
    return transition(session, job_id, JobState.RUNNING, JobState.QUEUED, reason, {"retry_in_s": delay_s},
                      commit=False, run_after=now() + timedelta(seconds=delay_s), queued_at=now(), progress=0.0)
