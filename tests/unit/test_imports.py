"""The pure rules of bulk import (core/imports.py): root containment, sidecar and source tags, bounded."""

from __future__ import annotations

from pathlib import PurePosixPath as P

import pytest

from orchestrator.core import imports as rules
from orchestrator.core.errors import Forbidden


def test_inside_compares_whole_parts() -> None:
    roots = [P("/data/in")]
    assert rules.inside(P("/data/in"), roots)
    assert rules.inside(P("/data/in/a/b.png"), roots)
    assert not rules.inside(P("/data/in2/b.png"), roots)
    assert not rules.inside(P("/data"), roots)
    assert not rules.inside(P("/etc/passwd"), roots)
    assert not rules.inside(P("/data/in/x"), [])


def test_check_inside_names_the_setting() -> None:
    with pytest.raises(Forbidden, match="import_roots .MEDIALAB_IMPORT_ROOTS. lists no folder"):
        rules.check_inside("/data/in", P("/data/in"), [], [])
    with pytest.raises(Forbidden, match="resolves to '/etc'.*outside") as exc:
        rules.check_inside("/data/in/link", P("/etc"), [P("/data/in")], ["/data/in"])
    assert exc.value.status == 403
    rules.check_inside("/data/in/a", P("/data/in/a"), [P("/data/in")], ["/data/in"])


def test_sidecar_names_and_media_names() -> None:
    assert rules.sidecar_names("x.png") == ("x.png.json", "x.json")
    assert rules.is_media_name("a.PNG") and rules.is_media_name("clip.mp4")
    assert not rules.is_media_name("a.json") and not rules.is_media_name("notes.txt")


def test_sidecar_tags_scalars_only_sorted_bounded() -> None:
    data = {"fps": 24, "scene": "intro\nshot", "ok": True, "none": None, "list": [1], "obj": {"a": 1},
            "score": 0.5, "long": "v" * 100}
    tags = rules.sidecar_tags(data, room=10, max_length=20)
    assert tags == ["fps:24", "long:" + "v" * 15, "ok:true", "scene:intro shot", "score:0.5"]
    assert rules.sidecar_tags(data, room=2, max_length=20) == ["fps:24", "long:" + "v" * 15]
    assert rules.sidecar_tags([1, 2], room=5, max_length=20) == []
    assert rules.sidecar_tags(data, room=0, max_length=20) == []


def test_source_tag_keeps_the_end_and_a_hash_when_too_long() -> None:
    assert rules.source_tag("/data/in/a.png", 128) == "source:/data/in/a.png"
    long_a = "/data/" + "x" * 200 + "/a.png"
    long_b = "/data/" + "y" * 200 + "/a.png"
    a, b = rules.source_tag(long_a, 64), rules.source_tag(long_b, 64)
    assert len(a) == 64 and a.startswith("source:") and a.endswith("/a.png") and "…" in a
    assert a != b  # the hash of the whole source tells them apart


def test_file_tags_within_max_tags() -> None:
    sidecar = {f"k{i:02}": i for i in range(40)}
    tags = rules.file_tags(["batch:1"], "/data/in/a.png", sidecar, max_tags=5, max_length=128)
    assert tags == ["batch:1", "source:/data/in/a.png", "k00:0", "k01:1", "k02:2"]
    assert len(rules.file_tags([], "/a.png", sidecar, max_tags=1, max_length=128)) == 1
