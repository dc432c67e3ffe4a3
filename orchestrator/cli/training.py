"""The training commands of ``medialab``: datasets, train, trainer, models."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.api.routes.artifacts import artifact_out
from orchestrator.api.schemas import LoraModelOut
from orchestrator.app import artifacts as artifact_app
from orchestrator.bootstrap import Context
from orchestrator.cli.common import JsonOption, console, context, err, fail, follow, parse_sets, print_json, session
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.core.states import JobState
from orchestrator.settings import get_settings
from orchestrator.training.app import datasets as dataset_store
from orchestrator.training.app import registry
from orchestrator.training.app import trainings as tj
from orchestrator.training.core.presets import PRESETS

datasets_app = typer.Typer(help="Training datasets (stored, checked, versioned by sha256).", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: trained LoRAs.", no_args_is_help=True)


def _artifact(ctx: Context, ref: str) -> str:
    """An artifact id, or a file here that is uploaded as an input first."""
    path = Path(ref)
    if path.is_file():
        with ctx.db.session() as s:
            return artifact_app.store_input(s, ctx.store, path, path.name, settings=ctx.settings).id
    return ref


@datasets_app.command("build")
def datasets_build(
    name: str,
    trigger: Annotated[str, typer.Option(help="Trigger word put into the captions.")],
    image: Annotated[list[str], typer.Option("--image", "-i", help="Image file or artifact id (repeat).")] = [],  # noqa: B006
    video: Annotated[str | None, typer.Option(help="Video file or artifact id to sample frames from.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames sampled evenly from the video (default 20).")] = None,
    every_n: Annotated[int | None, typer.Option(help="Or every n-th frame.")] = None,
    caption: Annotated[list[str], typer.Option(help="IMAGE=caption for one image (repeat).")] = [],  # noqa: B006
    caption_template: Annotated[str | None, typer.Option(help="e.g. 'photo of {trigger}, {caption}'.")] = None,
    preset: str = "sd15-character",
    resolution: Annotated[int | None, typer.Option(help="Pixels the pictures are prepared for (default: the preset's, "
                                                        "512 for sd15-character); a training of this dataset must "
                                                        "use the same resolution.")] = None,
    face_centred: bool = False,
) -> None:
    """Build a dataset from images and/or video frames, check it against the preset and store it."""
    ctx = context()
    try:
        images = [_artifact(ctx, ref) for ref in image]
        captions = {}
        for item in caption:
            ref, sep, text = item.partition("=")
            if not sep:
                raise InvalidInput(f"--caption {item!r}: expected IMAGE=caption")
            captions[images[image.index(ref)] if ref in image else ref] = text
        with ctx.db.session() as s:
            art = dataset_store.build(s, ctx.store, name=name, trigger=trigger, images=images, captions=captions,
                                      caption_template=caption_template,
                                      video=_artifact(ctx, video) if video else None, frames=frames,
                                      every_n=every_n, preset=preset, resolution=resolution,
                                      face_centred=face_centred)
    except MediaLabError as exc:
        fail(exc)
    p = art.params or {}
    res = p.get("resolution")
    console.print(f"dataset [bold]{art.id}[/bold] {p.get('name')} v{p.get('version')}: {p.get('images')} "
                  f"images at {res} px, sha256 {art.sha256[:12]}", soft_wrap=True)
    if preset in PRESETS and PRESETS[preset].resolution != res:
        console.print(f"  {preset} trains at {PRESETS[preset].resolution} px: train this dataset with "
                      f"--set resolution={res}", soft_wrap=True)


@datasets_app.command("list")
def datasets_list(name: str | None = None, as_json: JsonOption = False) -> None:
    """The stored datasets (``--json``: as GET /v1/datasets)."""
    table = Table("id", "name", "version", "images", "resolution", "trigger", "sha256", "created")
    with session() as s:
        rows = dataset_store.list_datasets(s, name)
        if as_json:
            print_json([artifact_out(s, a) for a in rows])
            return
        for a in rows:
            p = a.params or {}
            table.add_row(a.id, str(p.get("name")), f"v{p.get('version')}", str(p.get("images")),
                          str(p.get("resolution")), str(p.get("trigger")), a.sha256[:12],
                          a.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def train(
    dataset: Annotated[str, typer.Option(help="Dataset artifact id (medialab datasets list).")],
    base: Annotated[str, typer.Option(help="Base checkpoint file name (checkpoints folder).")],
    preset: Annotated[str, typer.Option(help="sd15-character | sdxl-character.")] = "sd15-character",
    trigger: Annotated[str | None, typer.Option(help="Trigger word; default: the preset's.")] = None,
    name: Annotated[str | None, typer.Option(help="Registry name; default: the dataset's.")] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Training option name=value.")] = [],  # noqa: B006
    priority: int = 0,
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Queue a LoRA training (every option checked first) for a trainer; follow it with live progress."""
    ctx = context()
    try:
        with ctx.db.session() as s:
            job = tj.submit_training(s, ctx.store, ctx.settings, dataset=dataset, base=base, preset=preset,
                                     trigger=trigger, name=name, overrides=parse_sets(set_), priority=priority)
        console.print(f"queued training job [bold]{job.id}[/bold] (medialab jobs watch|cancel {job.id})")
        if watch:
            final = follow(ctx, job.id)
            if final.state != JobState.SUCCEEDED:
                err.print(f"[red]job {final.id} {final.state.value}[/red] {(final.error or {}).get('message', '')}")
                raise typer.Exit(1)
            with ctx.db.session() as s:
                model = tj.latest_model(s, job.id)
            if model:
                console.print(f"[green]registered[/green] {model.filename} ({model.state}), sha256 "
                                  f"{model.sha256[:12]}: use it with --set lora={model.filename}")
    except MediaLabError as exc:
        fail(exc)


def trainer(
    url: Annotated[str, typer.Option(envvar="MEDIALAB_URL", help="The orchestrator, e.g. http://orch:8000.")],
    key: Annotated[str, typer.Option(envvar="MEDIALAB_API_KEY", help="API key with the train role.")],
    name: Annotated[str | None, typer.Option(help="Trainer name; default: host-pid.")] = None,
    gpu_server: Annotated[str | None, typer.Option(help="The pool server sharing this GPU: it gets no inference "
                                                        "while this trainer trains.")] = None,
    sd_scripts: Annotated[Path | None, typer.Option(help="sd-scripts checkout; default MEDIALAB_SD_SCRIPTS_DIR.")]
    = None,
    python: Annotated[str | None, typer.Option(help="sd-scripts' Python; default MEDIALAB_TRAINER_PYTHON.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Runs and downloads; default <home>/trainer.")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="Base checkpoints found here are not downloaded.")] = None,
    cpu: Annotated[bool, typer.Option(help="Train on the CPU.")] = False,
    once: Annotated[bool, typer.Option(help="Train at most one job, then exit.")] = False,
) -> None:
    """Pull training jobs from the orchestrator, run sd-scripts here and report back (a GPU host)."""
    import os

    from orchestrator.training.runtime.trainer import HttpBackend, Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    st = get_settings()
    scripts = sd_scripts or st.sd_scripts_dir
    if scripts is None or not (scripts / "train_network.py").is_file():
        fail(f"no sd-scripts checkout at {scripts}: give --sd-scripts or MEDIALAB_SD_SCRIPTS_DIR "
                 "(scripts/install_sd_scripts.sh installs the pinned commit)")
    backend = HttpBackend(url, key, name or f"{socket.gethostname()}-{os.getpid()}", gpu_server)
    t = Trainer(backend, workdir=workdir or st.home / "trainer", sd_scripts_dir=scripts,
                python=python or st.trainer_python, tokenizer_cache_dir=st.tokenizer_cache_dir,
                models_dir=models_dir or st.models_dir, cpu=cpu, accelerate=st.trainer_accelerate)
    console.print(f"trainer [bold]{backend.name}[/bold] pulling from {url}"
                      + (f", sharing the GPU of {gpu_server}" if gpu_server else ""))
    if once:
        while (job := t.run_once()) is None:
            time.sleep(t.poll_s)
        console.print(f"job {job} done")
        return
    signal.signal(signal.SIGTERM, lambda *_: t.stop(0))
    try:
        t.run_forever()
    except KeyboardInterrupt:
        err.print("stopping (a job in training is taken back by the orchestrator when its lease ends)")


@models_app.command("list")
def models_list(name: str | None = None, state: str | None = None, as_json: JsonOption = False) -> None:
    """The trained LoRAs (``--json``: as GET /v1/models)."""
    table = Table("name", "version", "file", "state", "base model", "trigger", "sha256", "created")
    with session() as s:
        rows = registry.list_models(s, name, state)
    if as_json:
        print_json([LoraModelOut.model_validate(m) for m in rows])
        return
    for m in rows:
        style = {"approved": "green", "withdrawn": "red"}.get(m.state, "yellow")
        table.add_row(m.name, f"v{m.version}", m.filename, f"[{style}]{m.state}[/]", m.base_model or "",
                      ", ".join(m.trigger_words), m.sha256[:12], m.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@models_app.command("show")
def models_show(ref: str, as_json: JsonOption = False) -> None:
    """By name (newest version), name@vN, file name, id or sha256 prefix (``--json``: plain, as GET /v1/models
    lists it)."""
    with session() as s:
        m = registry.get_model(s, ref)
    if as_json:
        print_json(LoraModelOut.model_validate(m))
        return
    console.print_json(json.dumps(m.model_dump(mode="json")))


@models_app.command("approve")
def models_approve(ref: str) -> None:
    with session() as s:
        m = registry.set_state(s, ref, registry.LoraState.approved)
    console.print(f"{m.filename} approved: jobs may use it")


@models_app.command("withdraw")
def models_withdraw(ref: str) -> None:
    with session() as s:
        m = registry.set_state(s, ref, registry.LoraState.withdrawn)
    console.print(f"{m.filename} withdrawn: jobs naming it are refused")


@models_app.command("distribute")
def models_distribute(ref: str) -> None:
    """Copy it to every pool server again and refresh their capabilities."""
    ctx = context()
    try:
        with ctx.db.session() as s:
            m = registry.get_model(s, ref)
            result = registry.distribute(s, ctx.store, ctx.settings, m)
    except MediaLabError as exc:
        fail(exc)
    for server, r in sorted(result.items()):
        console.print(f"{server}: " + ("[green]has it[/]" if r.get("ok") else f"[red]no[/] {r.get('error')}"))


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(models_app, name="models")
    app.command("train")(train)
    app.command("trainer")(trainer)
