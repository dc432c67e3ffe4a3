"""Training datasets: images cropped and resized for one resolution, a caption per image, a deterministic tar.

No I/O: ``build_dataset`` and ``check_dataset`` take bytes and give bytes (a face-centred crop asks the
``face_finder`` it is given). ``Dataset.to_tar`` gives the same bytes for the same input, so the stored dataset
artifact is content-addressed and versioned by its sha256. The files (laying a dataset out for sd-scripts,
frames out of a video, OpenCV's face finder) are ``training/runtime/dataset_files.py``'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import string
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from orchestrator.core.errors import InvalidInput

if TYPE_CHECKING:
    from orchestrator.training.core.presets import TrainingSpec

Crop = Literal["centre", "none"]
Box = tuple[int, int, int, int]  # left, top, right, bottom
FaceFinder = Callable[[Image.Image], Box | None]

MIN_IMAGES = 5
MAX_IMAGES = 5000  # images (and captions) of one dataset: the one bound (API schemas, dataset_store)
TEMPLATE_FIELDS = frozenset({"trigger", "caption", "name"})
MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class DatasetImage:
    """One input picture: a name (its stem names the files), the encoded bytes, the user's caption if any."""

    name: str
    data: bytes
    caption: str | None = None


@dataclass(frozen=True)
class DatasetItem:
    """One prepared picture: PNG bytes at the dataset's size and the caption written beside it."""

    name: str
    png: bytes
    caption: str | None
    width: int
    height: int
    source_width: int
    source_height: int
    source_sha256: str
    pixel_hash: str  # sha256 of the prepared pixels: equal for the same picture in another encoding
    dhash: int  # 64-bit difference hash: equal for pictures that look alike
    face_found: bool | None = None  # None: no face-centred crop asked for


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset; ``items`` are in name order."""

    resolution: int
    trigger: str
    crop: Crop
    items: tuple[DatasetItem, ...] = field(default_factory=tuple)

    def to_tar(self) -> bytes:
        """A deterministic tar: manifest.json, img/<name>.png, img/<name>.txt (sorted, no times, no owners)."""
        manifest = {
            "format": FORMAT, "resolution": self.resolution, "trigger": self.trigger, "crop": self.crop,
            "items": [{k: v for k, v in vars(it).items() if k != "png"} for it in self.items],
        }
        entries = {MANIFEST: json.dumps(manifest, sort_keys=True, indent=1).encode()}
        for it in self.items:
            entries[f"img/{it.name}.png"] = it.png
            if it.caption is not None:
                entries[f"img/{it.name}.txt"] = it.caption.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in sorted(entries):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(entries[name]), 0o644, 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(entries[name]))
        return buf.getvalue()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_tar()).hexdigest()

    @classmethod
    def from_tar(cls, data: bytes) -> Dataset:
        """Read a tar written by ``to_tar``; InvalidInput when it is not one."""
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
            manifest = json.loads(files[MANIFEST])
            if manifest.get("format") != FORMAT:
                raise InvalidInput(f"dataset format {manifest.get('format')!r} is not {FORMAT}")
            items = tuple(DatasetItem(png=files[f"img/{it['name']}.png"], **it) for it in manifest["items"])
            return cls(resolution=manifest["resolution"], trigger=manifest["trigger"], crop=manifest["crop"],
                       items=items)
        except (tarfile.TarError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a dataset archive: {exc}") from exc


def safe_stem(name: str) -> str:
    """A file stem from a user's name: letters, digits, '.', '_', '-' only, at most 80 characters."""
    stem = Path(name).stem if "." in name else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return stem[:80]


def unique_names(names: Iterable[str]) -> list[str]:
    """Safe stems, made unique (ignoring case) with -2, -3... in order of appearance."""
    taken: set[str] = set()
    out = []
    for name in names:
        stem = candidate = safe_stem(name)
        n = 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def check_template(template: str) -> None:
    """A caption template may use {trigger}, {caption} and {name}, and must place {trigger}."""
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise InvalidInput(f"caption template {template!r}: {exc}") from exc
    unknown = used - TEMPLATE_FIELDS
    if unknown or "" in used:
        raise InvalidInput(f"caption template {template!r} uses {sorted(unknown) or ['{}']}; "
                           f"allowed: {{trigger}}, {{caption}}, {{name}}")
    if "trigger" not in used:
        raise InvalidInput(f"caption template {template!r} must contain {{trigger}}")


def tidy(caption: str) -> str:
    """One line, single spaces, no empty comma-separated parts left by an empty {caption}."""
    parts = [" ".join(p.split()) for p in caption.replace("\n", " ").split(",")]
    return ", ".join(p for p in parts if p)


def make_caption(user: str | None, template: str | None, trigger: str, name: str) -> str | None:
    """The caption for one image: the template filled in with the user's caption, or the user's caption with the
    trigger put in front when it lacks it, or None when there is neither."""
    user = tidy(user) if user else None
    if template is not None:
        return tidy(template.format(trigger=trigger, caption=user or "", name=name))
    if user is None:
        return None
    return user if trigger in user else f"{trigger}, {user}"


def square_box(width: int, height: int, centre: tuple[float, float] | None = None) -> Box:
    """The largest square inside the picture, centred on ``centre`` (default the middle) but kept inside."""
    side = min(width, height)
    cx, cy = centre if centre is not None else (width / 2, height / 2)
    left = min(max(round(cx - side / 2), 0), width - side)
    top = min(max(round(cy - side / 2), 0), height - side)
    return left, top, left + side, top + side


def difference_hash(img: Image.Image) -> int:
    """64-bit dHash: brightness gradients of a 9x8 greyscale thumbnail."""
    px = img.convert("L").resize((9, 8), Image.Resampling.BILINEAR).tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    return bits


def prepare(img: Image.Image, resolution: int, crop: Crop, face: Box | None) -> Image.Image:
    """Crop to a square (centred on the face if given) and resize to the resolution; or, with crop 'none',
    only shrink so that the shorter side is the resolution (aspect kept, for buckets)."""
    if crop == "none":
        short = min(img.size)
        if short <= resolution:
            return img
        scale = resolution / short
        return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                          Image.Resampling.LANCZOS)
    centre = ((face[0] + face[2]) / 2, (face[1] + face[3]) / 2) if face else None
    box = square_box(img.width, img.height, centre)
    return img.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)


def build_dataset(images: Sequence[DatasetImage], *, resolution: int, caption_template: str | None, trigger: str,
                  face_centred: bool = False, crop: Crop = "centre",
                  face_finder: FaceFinder | None = None) -> Dataset:
    """Decode, crop, resize and caption every image; InvalidInput names an image that cannot be read.
    ``face_finder`` (needed with ``face_centred``) finds the face box of an image, e.g.
    ``training.runtime.dataset_files.opencv_face_finder``."""
    if resolution < 64 or resolution > 4096:
        raise InvalidInput(f"resolution {resolution} is outside 64..4096")
    if crop not in ("centre", "none"):
        raise InvalidInput(f"crop must be 'centre' or 'none', not {crop!r}")
    if face_centred and crop != "centre":
        raise InvalidInput("face_centred needs crop 'centre'")
    if not trigger.strip():
        raise InvalidInput("a trigger word is needed")
    if caption_template is not None:
        check_template(caption_template)
    if len(images) > MAX_IMAGES:
        raise InvalidInput(f"{len(images)} images, over the limit dataset.MAX_IMAGES={MAX_IMAGES}",
                           limit="dataset.MAX_IMAGES", value=MAX_IMAGES)
    if face_centred and face_finder is None:
        raise ValueError("face_centred needs a face_finder")
    items = []
    for image, name in zip(images, unique_names(i.name for i in images), strict=True):
        try:
            with Image.open(io.BytesIO(image.data)) as raw:
                raw.load()
                img = ImageOps.exif_transpose(raw).convert("RGB")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"image {image.name!r} cannot be read: {exc}") from exc
        face = face_finder(img) if face_centred and face_finder is not None else None
        out = prepare(img, resolution, crop, face)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        items.append(DatasetItem(
            name=name, png=buf.getvalue(), caption=make_caption(image.caption, caption_template, trigger, name),
            width=out.width, height=out.height, source_width=img.width, source_height=img.height,
            source_sha256=hashlib.sha256(image.data).hexdigest(),
            pixel_hash=hashlib.sha256(out.tobytes()).hexdigest(), dhash=difference_hash(out),
            face_found=(face is not None) if face_centred else None))
    items.sort(key=lambda it: it.name)
    return Dataset(resolution=resolution, trigger=trigger, crop=crop, items=tuple(items))


def resolution_problem(prepared: int, trains: int) -> str:
    """A dataset's pictures are cropped and resized for one resolution: another one does not fit it."""
    return f"the dataset was prepared at {prepared} px but the spec trains at {trains} px"


def check_dataset(dataset: Dataset, spec: TrainingSpec) -> list[str]:
    """What would make this dataset train badly or fail with this spec; empty when it is fine."""
    problems = []
    n = len(dataset.items)
    if n < MIN_IMAGES:
        problems.append(f"{n} image(s): at least {MIN_IMAGES} are needed for a character LoRA")
    if n * spec.num_repeats < spec.batch_size:
        problems.append(f"{n} image(s) x {spec.num_repeats} repeat(s) do not fill one batch of {spec.batch_size}")
    if dataset.resolution != spec.resolution:
        problems.append(resolution_problem(dataset.resolution, spec.resolution))
    if dataset.trigger != spec.trigger:
        problems.append(f"the dataset's trigger {dataset.trigger!r} is not the spec's {spec.trigger!r}")
    small = [it for it in dataset.items if min(it.source_width, it.source_height) < spec.resolution]
    if small and not spec.enable_bucket:
        for it in small:
            verb = "was upscaled" if dataset.crop == "centre" else "is used with buckets off and fails sd-scripts"
            problems.append(f"{it.name} ({it.source_width}x{it.source_height}) is smaller than the "
                            f"{spec.resolution} px resolution and {verb}")
    missing = [it.name for it in dataset.items if not it.caption]
    if missing:
        problems.append(f"{len(missing)} image(s) without a caption: {', '.join(missing[:10])}"
                        + (" ..." if len(missing) > 10 else ""))
    lacking = [it.name for it in dataset.items if it.caption and spec.trigger not in it.caption]
    if lacking:
        problems.append(f"{len(lacking)} caption(s) without the trigger {spec.trigger!r}: {', '.join(lacking[:10])}")
    no_face = [it.name for it in dataset.items if it.face_found is False]
    if no_face:
        problems.append(f"no face found (centre crop used) in: {', '.join(no_face[:10])}")
    problems.extend(_duplicates(dataset.items))
    return problems


def _duplicates(items: Iterable[DatasetItem]) -> list[str]:
    out = []
    for label, key in (("the same picture", "pixel_hash"), ("look alike", "dhash")):
        groups: dict[object, list[str]] = {}
        for it in items:
            groups.setdefault(getattr(it, key), []).append(it.name)
        for names in groups.values():
            if len(names) > 1 and (key == "pixel_hash" or not _same_pixels(items, names)):
                out.append(f"duplicates ({label}): {', '.join(names)}")
    return out


def _same_pixels(items: Iterable[DatasetItem], names: list[str]) -> bool:
    """True when the look-alike group is already reported as exact duplicates."""
    hashes = {it.pixel_hash for it in items if it.name in names}
    return len(hashes) == 1


def frame_indices(total: int, *, every_n: int | None = None, count: int | None = None) -> set[int]:
    """Which frame numbers to keep out of ``total``."""
    if every_n is not None:
        return set(range(0, total, every_n))
    assert count is not None
    if count >= total:
        return set(range(total))
    return {round(i * (total - 1) / (count - 1)) for i in range(count)} if count > 1 else {total // 2}
