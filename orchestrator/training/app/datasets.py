"""Datasets as artifacts: built from stored images and/or frames of a stored video, checked, then stored.

The dataset is part A's deterministic tar (``dataset.py``), stored content-addressed as an artifact of
role ``dataset`` (origin ``dataset:<sha256>``: the same pictures and captions give the same artifact) with
its input artifacts as lineage. Its version is its sha256; datasets of one name are also numbered
(``params.version``) and tagged ``dataset:<name>``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from orchestrator.core import limits
from orchestrator.core.errors import InvalidInput
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact, ArtifactTag
from orchestrator.runtime import ingest
from orchestrator.settings import Settings, get_settings
from orchestrator.training.app import registry as reg
from orchestrator.training.core.dataset import (
    MAX_IMAGES,
    Dataset,
    DatasetImage,
    build_dataset,
    check_dataset,
    resolution_problem,
)
from orchestrator.training.core.presets import TrainingSpec, spec_from
from orchestrator.training.runtime.dataset_files import opencv_face_finder, sample_frames
from storage import ObjectStore

ROLE = "dataset"
CONTENT_TYPE = "application/x-tar"


def _read(store: ObjectStore, art: Artifact) -> bytes:
    with artifact_db.open_artifact(store, art) as f:  # a lost object: 404 naming the artifact
        return f.read()


def _input(session: Session, ref: str, kind: str) -> Artifact:
    art = session.get(Artifact, ref)
    if art is None:
        raise InvalidInput(f"unknown artifact {ref!r}")
    if not art.content_type.startswith(f"{kind}/"):
        raise InvalidInput(f"artifact {ref} is {art.content_type}, not an {kind}")
    return art


def build(session: Session, store: ObjectStore, *, name: str, trigger: str, images: list[str] | None = None,
          captions: dict[str, str] | None = None, caption_template: str | None = None,
          video: str | None = None, frames: int | None = None, every_n: int | None = None,
          preset: str | None = "sd15-character", resolution: int | None = None, face_centred: bool = False,
          crop: str = "centre", settings: Settings | None = None) -> Artifact:
    """Build, check against the preset (with ``trigger`` and ``resolution``), store. Every problem
    ``check_dataset`` finds refuses the dataset, named in the error. Names, captions and the caption
    template are bounded first (``max_name_length``, ``max_string_length``)."""
    caps = settings or get_settings()
    limits.check_name(name, "dataset name", caps.max_name_length)
    limits.check_name(trigger, "trigger", caps.max_name_length)
    limits.check_json({"captions": captions or {}, "caption_template": caption_template}, "the dataset",
                      max_string=limits.Limit.setting(caps, "max_string_length"),
                      max_items=limits.Limit("dataset.MAX_IMAGES", MAX_IMAGES),  # a caption per image
                      max_key=limits.Limit("limits.MAX_QUERY_LENGTH", limits.MAX_QUERY_LENGTH))  # artifact ids
    limits.check_name(name, "dataset name", reg.MAX_NAME_LENGTH, reg.NAME_LIMIT, pattern=reg.NAME,
                      rule=f"{reg.NAME_RULE} (it names the LoRA trained on it)")
    images = list(images or [])
    captions = dict(captions or {})
    unknown = set(captions) - set(images)
    if unknown:
        raise InvalidInput(f"captions given for artifacts that are not among the images: {', '.join(sorted(unknown))}")
    if not images and not video:
        raise InvalidInput("give images (artifact ids) and/or a video artifact to sample frames from")
    if video and frames is None and every_n is None:
        frames = 20
    overrides: dict[str, Any] = {"trigger": trigger}
    if resolution is not None:
        overrides["resolution"] = resolution
    spec: TrainingSpec = spec_from(preset, overrides)
    pictures = []
    inputs = []
    for ref in images:
        art = _input(session, ref, "image")
        inputs.append(art.id)
        pictures.append(DatasetImage(name=Path(art.filename).stem or art.id, data=_read(store, art),
                                     caption=captions.get(ref)))
    if video:
        art = _input(session, video, "video")
        inputs.append(art.id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / (Path(art.filename).name or "video.mp4")
            with artifact_db.open_artifact(store, art) as src, path.open("wb") as dst:  # streamed: a video may be large
                shutil.copyfileobj(src, dst, 1 << 20)
            pictures += sample_frames(path, every_n=every_n, count=frames if every_n is None else None)
    dataset = build_dataset(pictures, resolution=spec.resolution, caption_template=caption_template,
                            trigger=spec.trigger, face_centred=face_centred, crop=crop,  # type: ignore[arg-type]
                            face_finder=opencv_face_finder)
    problems = check_dataset(dataset, spec)
    if problems:
        raise InvalidInput("the dataset is not fit for training: " + "; ".join(problems), problems=problems)
    return store_dataset(session, store, dataset, name, inputs, preset)


def store_dataset(session: Session, store: ObjectStore, dataset: Dataset, name: str, inputs: list[str],
                  preset: str | None) -> Artifact:
    """The dataset's tar stored, and its artifact (the one already there for the same tar: origin by sha256)."""
    data = dataset.to_tar()
    version = len(list(session.exec(select(ArtifactTag.artifact_id).where(ArtifactTag.tag == f"dataset:{name}")))) + 1
    art = ingest.store_stream(store, [data], origin=lambda obj: f"{ROLE}:{obj.sha256}", role=ROLE,
                              filename=f"{name}-v{version}.tar", content_type=CONTENT_TYPE,
                              params={"name": name, "version": version, "images": len(dataset.items),
                                      "resolution": dataset.resolution, "trigger": dataset.trigger,
                                      "crop": dataset.crop, "preset": preset,
                                      "captions": {it.name: it.caption for it in dataset.items}},
                              input_artifacts=inputs)
    existing = session.exec(select(Artifact).where(Artifact.origin == art.origin)).first()
    if existing:
        return existing
    session.add(art)
    session.flush()
    artifact_db.add_tags(session, art.id, [f"dataset:{name}", "dataset"])
    session.commit()
    return art


def load(store: ObjectStore, art: Artifact) -> Dataset:
    return Dataset.from_tar(_read(store, art))


def check_for(store: ObjectStore, art: Artifact, spec: TrainingSpec) -> None:
    """Check a stored dataset against the spec a training job will use. A resolution that is not the one the
    dataset was built at is refused naming both and the two ways out."""
    dataset = load(store, art)
    problems = check_dataset(dataset, spec)
    mismatch = resolution_problem(dataset.resolution, spec.resolution)
    if mismatch in problems:
        name = (art.params or {}).get("name") or "NAME"
        problems[problems.index(mismatch)] = (
            f"{mismatch}: train at the dataset's {dataset.resolution} px (--set resolution={dataset.resolution}; "
            f'"set": {{"resolution": {dataset.resolution}}} in POST /v1/trainings), or build the dataset again at '
            f"{spec.resolution} px (medialab datasets build {name} --resolution {spec.resolution} ...; "
            f'"resolution": {spec.resolution} in POST /v1/datasets)')
    if problems:
        raise InvalidInput(f"dataset {art.id} does not fit these training options: " + "; ".join(problems),
                           problems=problems)


def list_datasets(session: Session, name: str | None = None) -> list[Artifact]:
    q = select(Artifact).where(Artifact.role == ROLE).order_by(col(Artifact.created_at).desc())
    if name:
        q = q.where(col(Artifact.id).in_(select(ArtifactTag.artifact_id).where(ArtifactTag.tag == f"dataset:{name}")))
    return list(session.exec(q))
