"""The pure parts of ``medialab batch`` (``cli/batch.py``): input expansion, grids, manifest parsing, output
file names and item keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import batch
from orchestrator.core.errors import InvalidInput


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_inputs_expand_files_folders_and_globs_in_order_each_once(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "shots" / "b.png"), touch(tmp_path / "shots" / "a.jpg")
    touch(tmp_path / "shots" / "notes.txt")
    c = touch(tmp_path / "more" / "c.png")
    found = batch.expand_inputs([str(tmp_path / "shots"), str(tmp_path / "more" / "*.png"), str(a)])
    assert found == [b, a, c]
    with pytest.raises(InvalidInput, match="no such file"):
        batch.expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(InvalidInput, match="no file matches"):
        batch.expand_inputs([str(tmp_path / "*.webp")])
    with pytest.raises(InvalidInput, match="no image"):
        batch.expand_inputs([str(touch(tmp_path / "empty" / "x.txt").parent)])


def test_grids_are_every_combination_the_last_name_fastest() -> None:
    grid = batch.parse_grid(["resize=0.5,1", "mode=a,b"])
    assert grid == {"resize": [0.5, 1], "mode": ["a", "b"]}
    assert batch.combinations(grid) == [{"resize": 0.5, "mode": "a"}, {"resize": 0.5, "mode": "b"},
                                        {"resize": 1, "mode": "a"}, {"resize": 1, "mode": "b"}]
    assert batch.combinations({}) == [{}]
    for bad in (["resize"], ["resize="], ["a=1", "a=2"]):
        with pytest.raises(InvalidInput, match="--grid"):
            batch.parse_grid(bad)


def test_manifests_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"image": "a.png", "resize": 0.5}\n\n{"image": "b.png"}\n')
    assert batch.parse_manifest(jsonl) == [{"image": "a.png", "resize": 0.5}, {"image": "b.png"}]
    csv = tmp_path / "jobs.csv"
    csv.write_text("image,resize,prompt\na.png,0.5,a cat\nb.png,,true\n")
    assert batch.parse_manifest(csv) == [{"image": "a.png", "resize": 0.5, "prompt": "a cat"},
                                         {"image": "b.png", "prompt": True}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1]\n')
    with pytest.raises(InvalidInput, match="line 2"):
        batch.parse_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("image\n")
    with pytest.raises(InvalidInput, match="no jobs"):
        batch.parse_manifest(tmp_path / "empty.csv")
    with pytest.raises(InvalidInput, match="--manifest"):
        batch.parse_manifest(tmp_path / "missing.csv")


def test_output_names_are_unique_in_their_folder() -> None:
    namer = batch.Namer({"shot1__image.png"})
    assert namer.name("shot1", "image", ".png") == "shot1__image_1.png"
    assert namer.name("shot1", "image", "png") == "shot1__image_2.png"
    assert namer.name("shot 2", "out/x", ".webp") == "shot_2__out_x.webp"
    assert namer.name("a", "video", "") == "a__video"


def test_item_keys_depend_on_what_is_computed_only() -> None:
    key = batch.item_key("upscale", None, {"image": "ab" * 32}, {"resize": 0.5, "model": "m"})
    assert key == batch.item_key("upscale", None, {"image": "ab" * 32}, {"model": "m", "resize": 0.5})
    assert key.startswith("cli/") and len(key) <= 256
    assert key != batch.item_key("upscale", 2, {"image": "ab" * 32}, {"resize": 0.5, "model": "m"})
    assert key != batch.item_key("upscale", None, {"image": "cd" * 32}, {"resize": 0.5, "model": "m"})
    assert key != batch.item_key("upscale", None, {"image": "ab" * 32}, {"resize": 1.0, "model": "m"})


def test_a_plan_binds_inputs_to_the_only_image_parameter(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.png", b"a"), touch(tmp_path / "b.png", b"b")
    manifest = {"parameters": [{"name": "image", "type": "image"}, {"name": "resize", "type": "float"}]}
    items = batch.plan("up", None, [a, b], None, {"model": "m"}, {"resize": [0.5, 1.0]}, None, manifest)
    assert [(it.files["image"].name, it.params["resize"]) for it in items] == [
        ("a.png", 0.5), ("a.png", 1.0), ("b.png", 0.5), ("b.png", 1.0)]
    assert len({it.key for it in items}) == 4 and items[0].stem == "a__resize-0.5"
    with pytest.raises(InvalidInput, match="--param mask"):
        batch.plan("up", None, [a], "mask", {}, {}, None, manifest)
    rows = [{"image": str(a), "resize": 0.5}, {"image": "not-a-file", "resize": 1.0}]
    planned = batch.plan("up", None, [], None, {}, {}, rows, manifest)
    assert planned[0].files == {"image": a} and planned[0].params == {"resize": 0.5}
    assert planned[1].files == {} and planned[1].params == {"image": "not-a-file", "resize": 1.0}
