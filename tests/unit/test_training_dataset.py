"""Dataset building (crop, resize, captions), checks, the deterministic tar, the folder layout, video frames."""

import hashlib
import io
import tarfile

import pytest
from PIL import Image

from orchestrator.core.errors import InvalidInput
from orchestrator.training.core.dataset import (
    Dataset,
    DatasetImage,
    build_dataset,
    check_dataset,
    frame_indices,
    make_caption,
    square_box,
    unique_names,
)
from orchestrator.training.core.presets import spec_from
from orchestrator.training.runtime.dataset_files import sample_frames, write_dataset

SPEC = dict(base="sd15", network_dim=4, network_alpha=1, learning_rate=1e-4, max_train_steps=2, resolution=64,
            trigger="annaxyz")


def picture(w: int, h: int, seed: int, fmt: str = "PNG") -> bytes:
    """A picture with structure (gradients and a seeded block), so pictures differ in their dHash."""
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255 // w + seed * 37) % 256, (y * 255 // h) % 256, (x * y + seed * 91) % 256)
                 for y in range(h) for x in range(w)])
    img.paste((seed * 50 % 256, 0, 255 - seed * 50 % 256), (seed * 7 % (w // 2), seed * 5 % (h // 2),
                                                            seed * 7 % (w // 2) + w // 4, seed * 5 % (h // 2) + h // 4))
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95)
    return buf.getvalue()


def images(n: int = 5, size: tuple[int, int] = (120, 80)) -> list[DatasetImage]:
    return [DatasetImage(f"frame {i}.png", picture(*size, seed=i + 1), f"caption {i}") for i in range(n)]


def build(imgs, **kw):
    opts = dict(resolution=64, caption_template=None, trigger="annaxyz") | kw
    return build_dataset(imgs, **opts)


def test_centre_crop_resizes_to_a_square():
    ds = build(images())
    assert [it.name for it in ds.items] == [f"frame_{i}" for i in range(5)]
    for it in ds.items:
        assert (it.width, it.height, it.source_width, it.source_height) == (64, 64, 120, 80)
        assert Image.open(io.BytesIO(it.png)).size == (64, 64)


def test_crop_none_only_shrinks_keeping_the_aspect():
    ds = build(images(size=(200, 100)), crop="none")
    assert {(it.width, it.height) for it in ds.items} == {(128, 64)}
    small = build(images(size=(60, 40)), crop="none")
    assert {(it.width, it.height) for it in small.items} == {(60, 40)}  # never upscaled


def test_square_box_centres_and_stays_inside():
    assert square_box(120, 80) == (20, 0, 100, 80)
    assert square_box(120, 80, centre=(110, 40)) == (40, 0, 120, 80)  # clamped at the right edge
    assert square_box(80, 200, centre=(40, 10)) == (0, 0, 80, 80)


def test_face_centred_crop_uses_the_face_box():
    src = Image.new("RGB", (200, 100), (0, 0, 0))
    src.paste((255, 255, 255), (150, 30, 190, 70))  # the "face" at the right
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    found = build([DatasetImage("a", buf.getvalue())], face_centred=True, face_finder=lambda img: (150, 30, 190, 70))
    assert found.items[0].face_found is True
    right = Image.open(io.BytesIO(found.items[0].png)).convert("RGB")
    assert right.getpixel((48, 32)) == (255, 255, 255)  # the face is inside the crop (100..200 scaled to 64)
    missed = build([DatasetImage("a", buf.getvalue())], face_centred=True, face_finder=lambda img: None)
    assert missed.items[0].face_found is False
    assert "no face found (centre crop used) in: a" in check_dataset(missed, spec_from(None, SPEC))
    with pytest.raises(InvalidInput, match="face_centred needs crop 'centre'"):
        build(images(), face_centred=True, crop="none")
    with pytest.raises(ValueError, match="face_centred needs a face_finder"):  # the caller passes one (I/O)
        build(images(), face_centred=True)


@pytest.mark.parametrize(("user", "template", "expected"), [
    ("smiling, red dress", "photo of {trigger}, {caption}", "photo of annaxyz, smiling, red dress"),
    (None, "photo of {trigger}, {caption}", "photo of annaxyz"),
    (None, "{trigger} woman, {name}", "annaxyz woman, img_1"),
    ("smiling\n  outdoors", None, "annaxyz, smiling outdoors"),
    ("annaxyz at the beach", None, "annaxyz at the beach"),
    (None, None, None),
])
def test_captions(user, template, expected):
    assert make_caption(user, template, "annaxyz", "img_1") == expected


def test_caption_template_is_checked():
    with pytest.raises(InvalidInput, match="must contain {trigger}"):
        build(images(), caption_template="photo of {caption}")
    with pytest.raises(InvalidInput, match="uses \\['who'\\]"):
        build(images(), caption_template="{trigger} {who}")
    with pytest.raises(InvalidInput, match="caption template"):
        build(images(), caption_template="{trigger} {")


def test_names_are_safe_and_unique():
    assert unique_names(["a b.png", "a b.jpg", "A_B", "../../etc/passwd", "", "x.y.png"]) == \
        ["a_b", "a_b-2", "A_B-3", "passwd", "image", "x.y"]


def test_unreadable_image_is_named():
    with pytest.raises(InvalidInput, match="image 'bad.png' cannot be read"):
        build([DatasetImage("bad.png", b"not a picture")])


def test_tar_is_deterministic_and_round_trips():
    first, second = build(images()).to_tar(), build(images()).to_tar()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert "img/frame_0.png" in [m.name for m in members] and "img/frame_0.txt" in [m.name for m in members]
    back = Dataset.from_tar(first)
    assert back == build(images()) and back.to_tar() == first
    assert back.sha256 == hashlib.sha256(first).hexdigest()
    other = images()
    other[0] = DatasetImage(other[0].name, other[0].data, "another caption")
    assert build(other).sha256 != back.sha256  # a caption is part of the version


def test_from_tar_refuses_other_archives():
    with pytest.raises(InvalidInput, match="not a dataset archive"):
        Dataset.from_tar(b"garbage")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("x.txt"), io.BytesIO(b""))
    with pytest.raises(InvalidInput, match="not a dataset archive"):
        Dataset.from_tar(buf.getvalue())


def test_write_lays_out_images_and_captions(tmp_path):
    ds = build(images(3) + [DatasetImage("nocap.png", picture(90, 90, 9))])
    img = write_dataset(ds, tmp_path / "data")
    assert img == tmp_path / "data" / "img"
    assert sorted(p.name for p in img.iterdir()) == ["frame_0.png", "frame_0.txt", "frame_1.png", "frame_1.txt",
                                                      "frame_2.png", "frame_2.txt", "nocap.png"]
    assert (img / "frame_1.txt").read_text() == "annaxyz, caption 1"


def test_check_accepts_a_good_dataset():
    assert check_dataset(build(images()), spec_from(None, SPEC)) == []


def test_check_finds_problems():
    spec = spec_from(None, {**SPEC, "resolution": 128})
    imgs = images(3) + [DatasetImage("dup.png", images(1)[0].data), DatasetImage("nocap", picture(90, 90, 7))]
    problems = check_dataset(build(imgs, resolution=128), spec)
    text = "\n".join(problems)
    assert "duplicates (the same picture): dup, frame_0" in text
    assert "frame_1 (120x80) is smaller than the 128 px resolution and was upscaled" in text
    assert "2 image(s) without a caption: dup, nocap" in text
    few = check_dataset(build(images(2)), spec_from(None, SPEC))
    assert few[0] == "2 image(s): at least 5 are needed for a character LoRA"
    assert "spec trains at 128 px" in "\n".join(check_dataset(build(images()), spec))
    assert "trigger 'bob' is not the spec's" in "\n".join(check_dataset(build(images(), trigger="bob"),
                                                                        spec_from(None, SPEC)))


def test_check_finds_look_alikes_and_small_images_with_buckets_off():
    jpeg = DatasetImage("again.jpg", picture(120, 80, 1, fmt="JPEG"), "x")
    problems = check_dataset(build([*images(), jpeg]), spec_from(None, SPEC))
    assert any(p.startswith("duplicates (look alike): again, frame_0") for p in problems)
    small = build(images(size=(60, 40)), crop="none")
    assert any("fails sd-scripts" in p for p in check_dataset(small, spec_from(None, SPEC)))
    assert not any("fails sd-scripts" in p
                   for p in check_dataset(small, spec_from(None, {**SPEC, "enable_bucket": True})))


def test_frame_indices():
    assert frame_indices(30, every_n=10) == {0, 10, 20}
    assert frame_indices(30, count=4) == {0, 10, 19, 29}
    assert frame_indices(3, count=10) == {0, 1, 2}
    assert frame_indices(30, count=1) == {15}


def test_sample_frames_from_a_real_video(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (i * 10, 0, 0)))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    every = sample_frames(path, every_n=10)
    assert [f.name for f in every] == ["clip_f000000", "clip_f000010", "clip_f000020"]
    assert Image.open(io.BytesIO(every[1].data)).size == (64, 48)
    assert len(sample_frames(path, count=4)) == 4
    with pytest.raises(InvalidInput, match="give every_n or count"):
        sample_frames(path)
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    with pytest.raises(InvalidInput, match="bad.mp4 cannot be decoded"):
        sample_frames(tmp_path / "bad.mp4", count=2)
