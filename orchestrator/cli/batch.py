"""``medialab batch``: many jobs on a running service (``medialab serve``) in one request, over its API.

``run`` expands files/folders/globs (or a JSONL/CSV manifest) and ``--grid`` values into items, uploads each
input once, and posts one batch whose items carry keys derived from what they compute (template, version,
input sha256, parameters): the same command again submits only what is not there yet. It then shows the
batch's progress, downloads the outputs with ``--out`` and writes ``FOLDER/manifest.jsonl``. Ctrl-C leaves
the batch running. ``watch``, ``cancel``, ``retry``, ``list`` and ``show`` take a batch id (or a prefix)."""

from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.api.schemas import BatchOut, JobOut
from orchestrator.cli import frames as frame_cli
from orchestrator.cli.common import STATE_STYLE, JsonOption, console, err, fail, parse_sets, print_json, utc
from orchestrator.cli.remote import Remote, nothing_dispatches
from orchestrator.core import templates as tpl
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.core.states import JobState
from orchestrator.settings import get_settings

batch_app = typer.Typer(help="Run many jobs as one batch on a service, and watch, cancel, retry, list them.",
                        no_args_is_help=True)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
PREVIEW = 5  # items a dry run prints
POLL_S = 1.0
UPLOAD_THREADS = 4  # inputs uploaded at once (the service hashes and stores each as it streams in)
ProfileOption = Annotated[str | None, typer.Option(help="Profile of ~/.config/medialab/config.toml; default: "
                                                   "MEDIALAB_PROFILE.")]


# -- the pure parts ---------------------------------------------------------------------------------------------
def expand_inputs(specs: Iterable[str]) -> list[Path]:
    """Files, folders (their images, sorted, not recursive) and globs, in the order given, each file once."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise InvalidInput(f"input {spec!r}: no file matches")
            found.extend(files)
        else:
            raise InvalidInput(f"input {spec!r}: no such file or folder")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    if specs and not unique:
        raise InvalidInput(f"no image in {', '.join(specs)}")
    return list(unique.values())


def parse_value(raw: str) -> Any:
    """A value as ``--set`` reads it: JSON when it parses as JSON (numbers, true/false), else text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_grid(specs: Iterable[str]) -> dict[str, list[Any]]:
    """``name=a,b,c`` options as ``{name: [a, b, c]}`` (values read like ``--set``'s)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        if not sep or not name or not raw:
            raise InvalidInput(f"--grid {spec!r}: expected name=a,b,c")
        if name in grid:
            raise InvalidInput(f"--grid {name} is given twice")
        grid[name] = [parse_value(v.strip()) for v in raw.split(",")]
    return grid


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid (cartesian product, the last name varying fastest); ``[{}]`` for none."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def parse_manifest(path: Path) -> list[dict[str, Any]]:
    """A JSONL (one object a line) or CSV (a header row) file as one parameter dict per job. CSV cells are
    read like ``--set`` values; empty cells are left out."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--manifest {path}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"--manifest {path} line {n}: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise InvalidInput(f"--manifest {path} line {n}: a JSON object expected")
            rows.append(row)
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or any(not (f or "").strip() for f in reader.fieldnames):
            raise InvalidInput(f"--manifest {path}: a header row of parameter names expected")
        for n, cells in enumerate(reader, 2):
            if None in cells:
                raise InvalidInput(f"--manifest {path} line {n}: more cells than columns")
            rows.append({k.strip(): parse_value(v) for k, v in cells.items() if v not in (None, "")})
    if not rows:
        raise InvalidInput(f"--manifest {path}: no jobs in it")
    return rows


def item_key(template: str, version: int | None, inputs: dict[str, str], params: dict[str, Any]) -> str:
    """The idempotency key of one item: what it computes (template, version if given, the sha256 of each
    input file by parameter, the other parameters), so the same work gets the same key on every run."""
    body = {"template": template, "version": version, "inputs": inputs, "params": params}
    return "cli/" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "output"


@dataclass
class Namer:
    """Output file names ``<input stem>__<output name>[_<n>].<ext>``, unique in one folder (``taken``: the
    names already there)."""

    taken: set[str] = field(default_factory=set)

    def name(self, stem: str, output: str, ext: str) -> str:
        base, ext = f"{safe(stem)}__{safe(output)}", ext.lstrip(".")
        n = 0
        while True:
            name = f"{base}{f'_{n}' if n else ''}" + (f".{ext}" if ext else "")
            if name not in self.taken:
                self.taken.add(name)
                return name
            n += 1


@dataclass
class Planned:
    """One item as the CLI built it: its parameters (artifact ids in), the input files by parameter."""

    params: dict[str, Any]
    files: dict[str, Path]
    shas: dict[str, str]
    key: str = ""
    varies: dict[str, Any] = field(default_factory=dict)  # the --grid values of this item

    @property
    def stem(self) -> str:
        """The start of its output files' names: the input's stem, then each grid value (``a__resize-0.5``)."""
        base = next(iter(self.files.values())).stem if self.files else "item"
        return "__".join([base, *(f"{k}-{v}" for k, v in self.varies.items())])


# -- the commands ---------------------------------------------------------------------------------------------
def image_param(manifest: dict[str, Any], name: str | None, template: str) -> str:
    """``--param``, checked, else the template's only image/video parameter."""
    kinds = {t.value for t in tpl.ARTIFACT_TYPES}
    params = [p for p in manifest.get("parameters", []) if p.get("type") in kinds]
    if name is not None:
        if name not in {p["name"] for p in params}:
            have = ", ".join(p["name"] for p in params) or "none"
            raise InvalidInput(f"--param {name}: not an image or video parameter of '{template}' (those: {have})")
        return name
    if len(params) != 1:
        have = ", ".join(p["name"] for p in params) or "none"
        raise InvalidInput(f"template '{template}' has {len(params)} image/video parameters ({have}): name one "
                           "with --param")
    return str(params[0]["name"])


def plan(template: str, version: int | None, files: list[Path], param: str | None, fixed: dict[str, Any],
         grid: dict[str, list[Any]], rows: list[dict[str, Any]] | None, manifest: dict[str, Any]) -> list[Planned]:
    """The items (before upload): inputs x grid with ``fixed``, or one per manifest row."""
    items: list[Planned] = []
    if rows is not None:
        for row in rows:
            values = fixed | row
            paths = {k: Path(v) for k, v in values.items() if isinstance(v, str) and Path(v).expanduser().is_file()}
            items.append(Planned({k: v for k, v in values.items() if k not in paths}, paths, {}))
    else:
        target = image_param(manifest, param, template) if files else None
        for f in files or [None]:
            for combo in combinations(grid):
                items.append(Planned(fixed | combo, {target: f} if f is not None and target else {}, {},
                                     varies=combo))
    for it in items:
        it.shas = {k: file_sha256(p.expanduser()) for k, p in it.files.items()}
        it.key = item_key(template, version, it.shas, it.params)
    return items


def body_of(template: str, version: int | None, items: list[Planned], label: str | None, priority: int,
            dry_run: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"items": [{"template": template, "params": it.params} | ({"key": it.key} if it.key else {})
                                      | ({"version": version} if version is not None else {}) for it in items],
                            "priority": priority}
    if label:
        body["label"] = label
    if dry_run:
        body["dry_run"] = True
    return body


def service_inputs(remote: Remote, pages: int = 20) -> list[dict[str, Any]]:
    """The input artifacts the service has (newest first, at most ``pages`` x 500)."""
    arts: list[dict[str, Any]] = []
    for n in range(pages):
        page = remote.request("GET", "/v1/artifacts", params={"role": "input", "limit": 500,
                                                              "offset": 500 * n}).json()
        arts.extend(page)
        if len(page) < 500:
            break
    return arts


def dry_run(remote: Remote, template: str, version: int | None, items: list[Planned], label: str | None,
            priority: int, manifest: dict[str, Any]) -> None:
    """Validate every item through the API (``dry_run``), uploading nothing. A file the service has already
    (same sha256) is bound to its artifact (so items done before count as skipped); another is stood in for by
    an input of the same kind the service has (the file itself is checked here). With none there, that
    parameter's 'missing' errors are ignored and the note says those items' other values were not checked."""
    kinds = {p["name"]: p.get("type") for p in manifest.get("parameters", [])}
    arts = service_inputs(remote)
    by_sha = {a["sha256"]: a["id"] for a in reversed(arts)}
    file_params = {k for it in items for k in it.files}
    ids = {k: next((a["id"] for a in arts if str(a.get("content_type", "")).startswith(f"{kinds.get(k)}/")), None)
           for k in file_params}
    sent = []
    for it in items:
        known = all(sha in by_sha for sha in it.shas.values())
        bound = {k: by_sha.get(it.shas[k]) or ids[k] for k in it.files}
        sent.append(Planned(it.params | {k: v for k, v in bound.items() if v}, it.files, it.shas,
                            it.key if known else ""))
    note, skipped = "", 0
    try:
        skipped = len(remote.create_batch(body_of(template, version, sent, label, priority, True)).skipped)
    except InvalidInput as exc:
        errors = exc.extra.get("errors") or []
        if not errors or any(e.get("param") not in file_params or ids.get(e["param"]) for e in errors):
            raise
        note = " (the service has no input yet to stand in for the files: their other values are not checked)"
    console.print(f"dry run: {len(items)} job(s) of '{template}'" + (f" ({skipped} already done)" if skipped
                  else "") + f"; inputs: {len({p.resolve() for it in items for p in it.files.values()})} file(s)"
                  + note, soft_wrap=True)
    for n, it in enumerate(items[:PREVIEW]):
        shown = it.params | {k: str(p) for k, p in it.files.items()}
        console.print(f"  {n}: {json.dumps(shown, default=str)}", soft_wrap=True)
    if len(items) > PREVIEW:
        console.print(f"  ... and {len(items) - PREVIEW} more")
    console.print("nothing was uploaded or queued")


class Outputs:
    """``--out``: each finished job's outputs downloaded as ``<input stem>__<output name>[_<n>].<ext>`` and a
    line in ``manifest.jsonl`` (jobs already in it, from an earlier run, are not downloaded again)."""

    def __init__(self, remote: Remote, folder: Path, template: str) -> None:
        self.remote, self.folder, self.template = remote, folder, template
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "manifest.jsonl"
        self.done: set[str] = set()
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.done.add(json.loads(line)["job"])
                except (ValueError, KeyError, TypeError):
                    continue
        self.namer = Namer({p.name for p in folder.iterdir()})

    def add(self, job: JobOut, item: Planned | None) -> None:
        """``job`` as ``GET /v1/jobs/{id}`` gives it (with its outputs)."""
        if job.id in self.done:
            return
        files = []
        for art in job.outputs:
            name = self.namer.name(item.stem if item else job.id[:8], art.output_name or "output",
                                   Path(art.filename).suffix)
            self.remote.download(art.id, self.folder / name)
            files.append({"artifact": art.id, "output": art.output_name, "file": name, "sha256": art.sha256})
        line = {"input": {k: str(p) for k, p in item.files.items()} if item else None,
                "input_sha256": item.shas if item else None,
                "params": item.params if item else job.params, "job": job.id, "state": job.state.value,
                "template": job.template, "version": job.version, "outputs": files}
        with self.path.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        self.done.add(job.id)


def show_progress(remote: Remote, batch: BatchOut, items: list[Planned] | None = None,
                  outputs: Outputs | None = None) -> BatchOut:
    """Poll the batch until every job is final: counts by state, rate, ETA; failures printed as they happen;
    finished jobs handed to ``outputs``. Each poll reads the counts and only the state events since the last
    one (so a poll costs the same at the 10,000th job as at the first). Ctrl-C: the batch keeps running."""
    after = 0
    started = time.monotonic()
    first_done: int | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[rate]}"))
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"batch {batch.id[:8]}", total=max(batch.total, 1), rate="")
            while True:
                batch = remote.batch(batch.id, outputs=False)
                for e in remote.batch_events(batch.id, after):
                    after = e.event.id
                    if e.event.state == JobState.FAILED:
                        job = remote.job(e.event.job_id)
                        msg = (job.error or {}).get("message", "")
                        bar.console.print(f"[red]FAILED[/red] job {job.id[:8]} {json.dumps(job.params)}: {msg}",
                                          soft_wrap=True)
                    elif e.event.state == JobState.SUCCEEDED and outputs is not None:
                        item = items[e.batch_item] if items and e.batch_item is not None and \
                            e.batch_item < len(items) else None
                        outputs.add(remote.job(e.event.job_id), item)
                first_done = batch.done if first_done is None else first_done
                elapsed = time.monotonic() - started
                rate = (batch.done - first_done) / elapsed if elapsed > 0 else 0.0
                eta = f", ETA {batch.eta_s:.0f}s" if batch.eta_s is not None and not batch.finished else ""
                counts = " ".join(f"[{STATE_STYLE.get(s, '')}]{s}[/] {n}" for s, n in sorted(batch.counts.items()))
                bar.update(task, total=max(batch.total, 1), completed=batch.done if batch.total else 1,
                           description=f"batch {batch.id[:8]} {counts}", rate=f"{rate * 60:.1f} jobs/min{eta}")
                if batch.finished:
                    return batch
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        err.print(f"\nstopped watching; batch {batch.id} keeps running on {remote.url}.\n"
                  f"  watch it:  medialab batch watch {batch.id}\n  cancel it: medialab batch cancel {batch.id}")
        raise typer.Exit(130) from None


def upload_all(remote: Remote, files: dict[str, Path]) -> dict[str, str]:
    """Each file (by its sha256) uploaded once, a few at a time: sha256 -> artifact id."""
    with console.status(f"uploading {len(files)} input(s)..."), \
            ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
        return dict(zip(files, pool.map(lambda p: remote.upload(p).id, files.values()), strict=True))


def step_overrides(sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--set step.param=value`` values as a run's ``params`` (step id -> parameter -> value)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in sets.items():
        step, sep, param = name.partition(".")
        if not sep or not step or not param:
            raise InvalidInput(f"--set {name}=...: a pipeline batch takes step.param=value",
                               errors=[{"param": name, "message": "expected step.param"}])
        out.setdefault(step, {})[param] = value
    return out


def run_pipeline(remote: Remote, pipeline: str, files: list[Path], param: str | None, sets: dict[str, Any],
                 priority: int, label: str | None, out: Path | None, watch: bool) -> None:
    """``run --pipeline``: a run per input file as one batch; with ``--out`` the runs' final outputs are
    downloaded as ``<input stem>__<output name>.<ext>``, a line each in ``manifest.jsonl``."""
    if not files:
        raise InvalidInput("a pipeline batch needs input files", errors=[{"param": "inputs", "message": "empty"}])
    shas = [file_sha256(f.expanduser()) for f in files]
    uploaded = upload_all(remote, {sha: f.expanduser() for sha, f in zip(shas, files, strict=True)})
    body: dict[str, Any] = {"pipeline": pipeline, "inputs": [uploaded[sha] for sha in shas],
                            "params": step_overrides(sets), "priority": priority}
    body |= {k: v for k, v in (("label", label), ("input_param", param)) if v is not None}
    batch = remote.create_batch(body)
    console.print(f"batch [bold]{batch.id}[/bold] on {remote.url}: {batch.total} run(s) of pipeline {pipeline!r}",
                  soft_wrap=True)
    if not watch:
        console.print(f"watch it: medialab batch watch {batch.id}")
        return
    final = show_progress(remote, batch)
    console.print(summary(final).replace("no jobs", "no runs"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        namer, items = Namer({p.name for p in out.iterdir()}), {j.id: j.batch_item
                                                                for j in remote.batch_jobs(final.id)}
        with (out / "manifest.jsonl").open("a") as f:
            for art in remote.batch(final.id).outputs:
                item = items.get(art.job_id or "")
                src = files[item] if item is not None and item < len(files) else None
                name = namer.name(src.stem if src else art.id[:8], art.output_name or "output",
                                  Path(art.filename).suffix)
                remote.download(art.id, out / name)
                f.write(json.dumps({"input": str(src) if src else None, "item": item, "pipeline": pipeline,
                                    "artifact": art.id, "file": name, "sha256": art.sha256}) + "\n")
        console.print(f"manifest: {(out / 'manifest.jsonl').resolve()}", soft_wrap=True)
    if any(final.counts.get(s) for s in ("FAILED", "CANCELLED")):
        raise typer.Exit(1)


def run_frames(remote: Remote, template: str, body: dict[str, Any], dry_run_: bool, out: Path | None,
               watch: bool) -> None:
    """``run --frames-of``: the service extracts the video's frames (stored once) and makes them the batch's
    inputs; a dry run selects them and stores nothing. ``--out``: outputs named by their job."""
    if dry_run_:
        planned = remote.create_batch(body | {"dry_run": True})
        console.print(f"dry run: {planned.total} job(s) of '{template}' over frames of {body['frames']['video']}",
                      soft_wrap=True)
        for it in planned.preview:
            console.print(f"  {it['item']}: {json.dumps(it['params'], default=str)}", soft_wrap=True)
        if planned.total > len(planned.preview):
            console.print(f"  ... and {planned.total - len(planned.preview)} more")
        console.print("nothing was stored or queued")
        return
    batch = remote.create_batch(body)
    console.print(f"batch [bold]{batch.id or '(none new)'}[/bold] on {remote.url}: {batch.total} job(s) over "
                  f"frames of {body['frames']['video']}", soft_wrap=True)
    why = nothing_dispatches(remote) if batch.total else None
    if why is not None:
        err.print(f"[yellow]warning:[/yellow] {why}: the batch stays QUEUED until something dispatches it")
    follow(remote, batch, None, Outputs(remote, out, template) if out is not None else None, watch)


def follow(remote: Remote, batch: BatchOut, items: list[Planned] | None, outputs: Outputs | None,
           watch: bool) -> None:
    """After ``run`` created the batch: its progress until every job is final (``--no-watch``: how to watch it),
    the summary and the manifest; exit status 1 when a job failed or was cancelled."""
    if not watch:
        console.print(f"watch it: medialab batch watch {batch.id}")
        return
    final = show_progress(remote, batch, items, outputs) if batch.total else batch
    console.print(summary(final))
    if outputs is not None:
        console.print(f"manifest: {outputs.path.resolve()}", soft_wrap=True)
    if any(final.counts.get(s) for s in ("FAILED", "CANCELLED")):
        raise typer.Exit(1)


def summary(batch: BatchOut) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(batch.counts.items())) or "no jobs"
    return f"batch {batch.id}: {counts}"


@batch_app.command("run")
def run(template: str,
        inputs: Annotated[list[str] | None, typer.Argument(help="Image files, folders or globs.")] = None,
        param: Annotated[str | None, typer.Option("--param", help="The image parameter the inputs bind to; "
                                                  "default: the template's only one.")] = None,
        set_: Annotated[list[str], typer.Option("--set", "-s", help="name=value for every job.")] = [],  # noqa: B006
        grid: Annotated[list[str], typer.Option("--grid", "-g", help="name=a,b,c: a job for each value "
                                                "(several: every combination).")] = [],  # noqa: B006
        manifest: Annotated[Path | None, typer.Option(help="JSONL or CSV, one job a line; columns are parameters, "
                                                      "an existing file path is uploaded.")] = None,
        version: Annotated[int | None, typer.Option(help="Template version; default: newest.")] = None,
        priority: int = 0,
        label: Annotated[str | None, typer.Option(help="A label for the batch.")] = None,
        out: Annotated[Path | None, typer.Option(help="Folder for the outputs and manifest.jsonl.")] = None,
        dry_run_: Annotated[bool, typer.Option("--dry-run", help="Validate, print the jobs, write nothing.")] = False,
        watch: Annotated[bool, typer.Option(help="Show progress until the batch ends.")] = True,
        pipeline: Annotated[str | None, typer.Option(help="Run this pipeline once per input instead of a "
                                                     "template (TEMPLATE is then the first input; --set "
                                                     "step.param=value; --param: the pipeline input).")] = None,
        frames_of: Annotated[str | None, typer.Option("--frames-of", metavar="VIDEO_ID", help="Instead of INPUTS: "
                                                      "frames of this stored video, a job each (with --every, "
                                                      "--at, --scenes or --sharpest).")] = None,
        every: frame_cli.EveryOption = None, at: frame_cli.AtOption = None,
        scenes: frame_cli.ScenesOption = False, sharpest: frame_cli.SharpestOption = False,
        threshold: frame_cli.ThresholdOption = None,
        profile: ProfileOption = None) -> None:
    """Run TEMPLATE over many inputs (and --grid values) as one batch on a running service."""
    fixed = parse_sets(set_)
    try:
        if frames_of is not None or every is not None or at is not None or scenes or sharpest:
            if frames_of is None or inputs or manifest is not None or pipeline is not None:
                raise InvalidInput("--every/--at/--scenes/--sharpest go with --frames-of VIDEO_ID (no INPUTS, "
                                   "--manifest or --pipeline)")
            body: dict[str, Any] = {"template": template, "frames": {"video": frames_of} | frame_cli.selection(
                every, at, scenes, sharpest, threshold), "params": fixed, "grid": parse_grid(grid),
                "priority": priority}
            body |= {k: v for k, v in (("label", label), ("version", version)) if v is not None}
            with Remote.connect(get_settings(), profile) as remote:
                body["input_param"] = image_param(remote.template(template, version).manifest or {}, param,
                                                  template)
                run_frames(remote, template, body, dry_run_, out, watch)
            return
        if pipeline is not None:
            if manifest is not None or grid or dry_run_ or version is not None:
                raise InvalidInput("--pipeline takes INPUTS, --set, --param, --out (no --manifest, --grid, "
                                   "--dry-run or --version)")
            with Remote.connect(get_settings(), profile) as remote:
                run_pipeline(remote, pipeline, expand_inputs([template, *(inputs or [])]), param, fixed, priority,
                             label, out, watch)
            return
        if manifest is not None and (inputs or grid):
            raise InvalidInput("give either --manifest, or INPUTS and --grid, not both")
        rows = parse_manifest(manifest) if manifest is not None else None
        files = expand_inputs(inputs or [])
        combos = parse_grid(grid)
        with Remote.connect(get_settings(), profile) as remote:
            tmpl = remote.template(template, version).manifest or {}
            items = plan(template, version, files, param, fixed, combos, rows, tmpl)
            if dry_run_:
                dry_run(remote, template, version, items, label, priority, tmpl)
                return
            files = {it.shas[k]: p.expanduser() for it in items for k, p in it.files.items()}  # sha256 -> file
            uploaded = upload_all(remote, files)
            for it in items:
                for k in it.files:
                    it.params[k] = uploaded[it.shas[k]]
            batch = remote.create_batch(body_of(template, version, items, label, priority, False))
            queued = len(items) - len(batch.skipped)
            console.print(f"batch [bold]{batch.id or '(none new)'}[/bold] on {remote.url}: {queued} job(s) queued, "
                          f"{len(batch.skipped)} already done (skipped)")
            why = nothing_dispatches(remote) if queued else None
            if why is not None:
                err.print(f"[yellow]warning:[/yellow] {why}: the batch stays QUEUED until something dispatches it")
            outputs = Outputs(remote, out, template) if out is not None else None
            if outputs is not None:
                for index, job_id in sorted(batch.skipped.items()):
                    job = remote.job(job_id)
                    if job.state.value == "SUCCEEDED":
                        outputs.add(job, items[index])
            follow(remote, batch, items, outputs, watch)
    except MediaLabError as exc:
        fail(exc)


@batch_app.command("watch")
def watch_cmd(batch_id: str, profile: ProfileOption = None) -> None:
    """Show a batch's progress until every job is final (Ctrl-C: stop watching, the batch keeps running)."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            final = show_progress(remote, remote.batch(batch_id))
            console.print(summary(final))
    except MediaLabError as exc:
        fail(exc)
    if any(final.counts.get(s) for s in ("FAILED", "CANCELLED")):
        raise typer.Exit(1)  # as ``batch run``: a script can tell a batch that did not all succeed


@batch_app.command("cancel")
def cancel_cmd(batch_id: str, profile: ProfileOption = None) -> None:
    """Cancel a batch: its queued jobs at once, the running ones interrupted."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            console.print("cancelled " + summary(remote.cancel_batch(batch_id)))
    except MediaLabError as exc:
        fail(exc)


@batch_app.command("retry")
def retry_cmd(batch_id: str, profile: ProfileOption = None) -> None:
    """A new job for each FAILED or CANCELLED item of a batch."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            console.print("retried " + summary(remote.retry_batch(batch_id)))
    except MediaLabError as exc:
        fail(exc)


@batch_app.command("list")
def list_cmd(limit: int = 50, json_: JsonOption = False, profile: ProfileOption = None) -> None:
    """Batches, newest first."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            batches = remote.batches(limit)
    except MediaLabError as exc:
        fail(exc)
    if json_:
        print_json(batches)
        return
    table = Table("id", "label", "template", "jobs", "done", "counts", "created")
    for b in batches:
        table.add_row(b.id, b.label or "", b.template or "", str(b.total), f"{b.progress:.0%}",
                      " ".join(f"{s} {n}" for s, n in sorted(b.counts.items())), utc(b.created_at))
    console.print(table)


@batch_app.command("show")
def show_cmd(batch_id: str, json_: JsonOption = False, profile: ProfileOption = None) -> None:
    """A batch: counts by state, progress, ETA, outputs."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            b = remote.batch(batch_id)
    except MediaLabError as exc:
        fail(exc)
    if json_:
        print_json(b)
        return
    console.print(f"batch [bold]{b.id}[/bold] {b.label or ''}\n  template: {b.template or '(several)'}\n"
                  f"  created:  {utc(b.created_at)}\n  jobs:     {b.total} ({b.progress:.0%} done"
                  + (f", ETA {b.eta_s:.0f}s" if b.eta_s is not None and not b.finished else "") + ")\n"
                  f"  counts:   {' '.join(f'{s} {n}' for s, n in sorted(b.counts.items())) or 'none'}\n"
                  f"  outputs:  {len(b.outputs)}" + ("" if not b.cancel_requested else "\n  cancel requested"))


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")
