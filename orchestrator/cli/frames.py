"""``medialab frames VIDEO_ID``: frames of a stored video as input artifacts (every Nth, at time codes, the first
of each scene, the sharpest of each scene), printed as a table of index, time code and artifact id; ``--out``
downloads them as PNGs named by their time code.

Against a running service over its API (``POST /v1/artifacts/{id}/frames``) when one is named (MEDIALAB_URL, a
profile, ``--profile``); otherwise here, through the use case (``app/frames.py``) on the configured database and
store. ``selection`` is shared with ``medialab batch run --frames-of``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.api.schemas import ArtifactOut
from orchestrator.app import frames as frame_app
from orchestrator.cli.common import JsonOption, console, context, fail, print_json
from orchestrator.cli.remote import Remote
from orchestrator.core import frames as rules
from orchestrator.core.errors import InvalidInput, MediaLabError
from orchestrator.db import artifacts as artifact_db
from orchestrator.settings import get_settings

EveryOption = Annotated[int | None, typer.Option("--every", help="Every Nth frame (0, N, 2N, ...).")]
AtOption = Annotated[str | None, typer.Option("--at", help="Time codes in seconds, comma-separated: 1.5,3.0.")]
ScenesOption = Annotated[bool, typer.Option("--scenes", help="The first frame of each scene (scene cuts).")]
SharpestOption = Annotated[bool, typer.Option("--sharpest", help="The sharpest frame of each scene.")]
ThresholdOption = Annotated[float | None, typer.Option("--threshold", help="--scenes/--sharpest: the mean grey "
                                                       "difference in (0, 1] that starts a new scene "
                                                       f"(default {rules.DEFAULT_SCENE_THRESHOLD}).")]


def selection(every: int | None, at: str | None, scenes: bool, sharpest: bool,
              threshold: float | None) -> dict[str, Any]:
    """The options as the API's selection body (the service checks it: exactly one way, the limits)."""
    body: dict[str, Any] = {}
    if every is not None:
        body["every_n"] = every
    if at is not None:
        try:
            body["at"] = [float(t) for t in at.split(",") if t.strip()]
        except ValueError as exc:
            raise InvalidInput(f"--at {at!r}: expected seconds, comma-separated (1.5,3.0)", param="at") from exc
    if scenes:
        body["scenes"] = True
    if sharpest:
        body["sharpest"] = True
    if threshold is not None:
        body["scene_threshold"] = threshold
    given = [k for k in ("every_n", "at", "scenes", "sharpest") if k in body]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --every, --at, --scenes, --sharpest", param="every_n")
    return body


def file_name(art: ArtifactOut) -> str:
    """``t<time code>_f<index>.png``: sorted by name, the frames are in time order."""
    return f"t{rules.time_code(art.time_s or 0.0)}_f{art.frame_index or 0:06d}.png"


def _print(video: str, counts: dict[str, int], frames: list[ArtifactOut]) -> None:
    table = Table("index", "time (s)", "artifact", "size", title=f"frames of {video}")
    for art in frames:
        table.add_row(str(art.frame_index), f"{art.time_s or 0.0:.3f}", art.id,
                      f"{art.width}x{art.height}" if art.width else "")
    console.print(table)
    console.print(f"{counts.get('created', 0)} created, {counts.get('existing', 0)} existing")


def _remote(video: str, body: dict[str, Any], out: Path | None, profile: str | None) -> dict[str, Any]:
    with Remote.connect(get_settings(), profile) as remote:
        answer = remote.request("POST", f"/v1/artifacts/{video}/frames", json=body, timeout=None).json()
        if out is not None:
            for art in answer["frames"]:
                remote.download(art["id"], out / file_name(ArtifactOut.model_validate(art)))
    return answer


def _local(video: str, body: dict[str, Any], out: Path | None) -> dict[str, Any]:
    ctx = context()
    try:
        with ctx.db.session() as s:
            tags = body.pop("tags", [])
            spec = frame_app.spec_of(ctx.settings, **body)
            result = frame_app.extract_frames(s, ctx.store, video, spec, tags, ctx.settings)
            frames = []
            for art in result.frames:
                shown = ArtifactOut.model_validate(art)
                shown.tags = artifact_db.artifact_tags(s, art.id)
                frames.append(shown)
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    with artifact_db.open_artifact(ctx.store, art) as src, \
                            (out / file_name(shown)).open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            return {"video": result.video.id, "counts": result.counts,
                    "frames": [f.model_dump(mode="json") for f in frames]}
    finally:
        ctx.close()


def frames(video: Annotated[str, typer.Argument(metavar="VIDEO_ID", help="The video artifact's id (or a unique "
                                                "prefix).")],
           every: EveryOption = None, at: AtOption = None, scenes: ScenesOption = False,
           sharpest: SharpestOption = False, threshold: ThresholdOption = None,
           tag: Annotated[list[str], typer.Option("--tag", "-t", help="A tag for every frame (repeatable).")] = [],  # noqa: B006
           out: Annotated[Path | None, typer.Option(help="Download the frames into this folder as "
                                                    "t<seconds>_f<index>.png.")] = None,
           json_: JsonOption = False,
           profile: Annotated[str | None, typer.Option(help="Extract on this profile's service (default: "
                                                       "MEDIALAB_URL / MEDIALAB_PROFILE when set, else "
                                                       "here).")] = None,
           ) -> None:
    """Store frames of a video as input artifacts (each once: the same selection again finds them), with their
    time code and lineage to the video; prints index, time code and artifact id."""
    settings = get_settings()
    try:
        body = selection(every, at, scenes, sharpest, threshold) | {"tags": tag}
        if profile or settings.url or settings.profile:
            answer = _remote(video, body, out, profile)
        else:
            answer = _local(video, body, out)
    except MediaLabError as exc:
        fail(exc)
    if json_:
        print_json(answer)
        return
    _print(answer["video"], answer["counts"], [ArtifactOut.model_validate(a) for a in answer["frames"]])
    if out is not None:
        console.print(f"downloaded {len(answer['frames'])} frame(s) into {out.resolve()}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("frames")(frames)
