"""Frames from a stored video: the frames a ``FrameSpec`` selects (``core/frames.py``), each stored through the
ingest path as an input artifact (role "input", so jobs can take it) with its place in the video
(``frame_index``, ``time_s``), lineage to the video (``input_artifacts``) and origin ``frame:<video>:<index>``:
a frame is stored once, and a second extraction answers the same artifacts.

The video is decoded with no database connection held (``runtime/frames.py``: one pass measuring each frame,
a second encoding the chosen ones); the rows are written and committed once at the end."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orchestrator.core import frames as rules
from orchestrator.core import limits
from orchestrator.core.errors import InvalidInput
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact
from orchestrator.runtime import frames as decode
from orchestrator.runtime import ingest
from orchestrator.settings import Settings, get_settings
from storage import ObjectStore

IN_CHUNK = 500  # origins per IN (...) query


@dataclass
class Selection:
    """The frames a spec chooses in a video: their indexes and time codes, in time order."""

    video: Artifact
    indexes: list[int]
    times: list[float]


@dataclass
class Extracted:
    """The frame artifacts in time order; ``created``: those stored by this call (the others existed)."""

    video: Artifact
    frames: list[Artifact] = field(default_factory=list)
    created: list[Artifact] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"created": len(self.created), "existing": len(self.frames) - len(self.created)}


def spec_of(settings: Settings, every_n: int | None = None, at: Iterable[float] | None = None,
            scenes: bool = False, sharpest: bool = False, scene_threshold: float | None = None) -> rules.FrameSpec:
    """The checked spec, bounded by max_frames_per_extract (422 naming what is wrong)."""
    return rules.FrameSpec(every_n=every_n, at=None if at is None else tuple(at), scenes=scenes, sharpest=sharpest,
                           scene_threshold=rules.DEFAULT_SCENE_THRESHOLD if scene_threshold is None
                           else scene_threshold, max_frames=settings.max_frames_per_extract)


def video_of(session: Session, video_id: str) -> Artifact:
    """The video artifact: 404 for an unknown id, 422 for an artifact that is not a video."""
    art = artifact_db.get_artifact(session, video_id)
    if not art.content_type.startswith("video/"):
        raise InvalidInput(f"artifact {art.id} is {art.content_type}, not a video: frames come from a video",
                           param="video", errors=[{"param": "video", "message": "not a video"}])
    return art


def stored_frames(session: Session, video_id: str, indexes: list[int]) -> dict[int, Artifact]:
    """The frames of the video already stored, by index."""
    origins = [rules.origin(video_id, i) for i in indexes]
    found: dict[int, Artifact] = {}
    for start in range(0, len(origins), IN_CHUNK):
        for art in session.exec(select(Artifact).where(col(Artifact.origin).in_(origins[start:start + IN_CHUNK]))):
            found[art.frame_index if art.frame_index is not None else int(art.origin.rsplit(":", 1)[1])] = art
    return found


def _select(video: Artifact, spec: rules.FrameSpec, path: Path) -> Selection:
    seen = decode.analyse(path, scores=spec.needs_scores, sharpness=spec.sharpest)
    duration = video.duration_s if video.duration_s is not None else seen.duration_s
    indexes = rules.select(spec, seen.times, seen.diffs or None, seen.sharpness or None, duration)
    return Selection(video, indexes, [seen.times[i] for i in indexes])


def select_frames(session: Session, store: ObjectStore, video_id: str, spec: rules.FrameSpec,
                  settings: Settings | None = None) -> Selection:
    """The frames the spec chooses, nothing stored (a dry run). No transaction is held while decoding."""
    cfg = settings or get_settings()
    video = video_of(session, video_id)
    session.commit()  # the read ends here: no pooled connection is held while the video is decoded
    with decode.video_file(store, video, cfg.home / "spool") as path:
        return _select(video, spec, path)


def extract_frames(session: Session, store: ObjectStore, video_id: str, spec: rules.FrameSpec,
                   tags: Iterable[str] = (), settings: Settings | None = None) -> Extracted:
    """Store the frames the spec chooses (those not stored before), tag every one of them with the request's
    tags and ``frame-of:<video id>``, one commit. 404: unknown artifact; 422: not a video, a bad spec, a time
    code past the end, a selection over max_frames_per_extract (nothing stored then)."""
    cfg = settings or get_settings()
    video = video_of(session, video_id)
    given = limits.check_tags([*tags, rules.frame_tag(video.id)], cfg)
    session.commit()  # no pooled connection is held while the video is decoded and the frames stored
    stem = Path(video.filename).stem or "video"
    with decode.video_file(store, video, cfg.home / "spool") as path:
        chosen = _select(video, spec, path)
        have = stored_frames(session, video.id, chosen.indexes)
        session.commit()
        built: list[Artifact] = []
        for frame in decode.frames_png(path, [i for i in chosen.indexes if i not in have]):
            built.append(ingest.store_stream(
                store, [frame.png], origin=rules.origin(video.id, frame.index), role="input",
                filename=f"{stem}_f{frame.index:06d}_t{rules.time_code(frame.time_s)}.png",
                input_artifacts=[video.id], frame_index=frame.index, time_s=frame.time_s))
    created = _write(session, video.id, chosen.indexes, built)
    frames = stored_frames(session, video.id, chosen.indexes)
    missing = [i for i in chosen.indexes if i not in frames]
    if missing:  # the decoder gave fewer frames the second time (it should not)
        raise InvalidInput(f"frames {missing[:10]} of video {video.id} could not be decoded again")
    ordered = [frames[i] for i in chosen.indexes]
    for art in ordered:
        artifact_db.add_tags(session, art.id, given)
    session.commit()
    return Extracted(video, ordered, [a for a in ordered if a.id in created])


def _write(session: Session, video_id: str, indexes: list[int], built: list[Artifact]) -> set[str]:
    """Add the new frame rows (flushed, not committed); a frame another extraction stored meanwhile is theirs.
    Returns the ids of the rows added."""
    for attempt in range(2):
        have = stored_frames(session, video_id, indexes) if attempt else {}
        rows = [a if not attempt else Artifact(**{k: getattr(a, k) for k in Artifact.model_fields if k != "id"})
                for a in built if a.frame_index not in have]
        session.add_all(rows)
        try:
            session.flush()
            return {a.id for a in rows}
        except IntegrityError:  # the same frames extracted at the same moment: retried once without theirs
            session.rollback()
            if attempt:
                raise
    return set()
