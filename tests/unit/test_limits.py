"""Limits on every input, as pure rules: names, counts, numbers (limits.py), media sizes (media.py), server
URLs (server_urls.py), a trainer's events; and the artifact store paths that apply them (no orphan object, no
row), deletion in the right order and refusals for referenced artifacts, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.app import admission
from orchestrator.app import artifacts as artifact_app
from orchestrator.app import servers as server_app
from orchestrator.core import limits
from orchestrator.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from orchestrator.core.server_urls import (
    canonical,
    duplicate_of,
    parse_server_url,
    redact,
    redact_value,
    same_server,
)
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import servers as server_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact, ArtifactTag, LoraModel
from orchestrator.runtime import dns, media
from orchestrator.settings import Settings
from orchestrator.training.app.trainings import check_events, finite_measures
from storage import LocalDiskStore
from tests.conftest import mp4_bytes, png_bytes
from tests.unit.test_database import db  # noqa: F401  (the SQLite + PostgreSQL fixture)

SETTINGS = Settings(max_name_length=16, max_string_length=100, max_params=4, max_tags=3, max_timeout_s=60.0)
ALL = frozenset({"127.0.0.1"})


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A valid PNG header claiming w x h 1-bit pixels, with (almost) no pixel data: 67 bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def refusal(exc: pytest.ExceptionInfo, limit: str, value: object) -> None:
    """The refusal names the limit and its value, in the message and in the problem's fields."""
    assert exc.value.extra.get("limit") == limit and exc.value.extra.get("value") == value, exc.value.extra
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    assert f"{limit}={shown}" in exc.value.message, exc.value.message


# -- names, counts, numbers ------------------------------------------------------------------------
def test_names_are_bounded_and_printable() -> None:
    assert limits.check_name("gpu-1", "server name", 16) == "gpu-1"
    with pytest.raises(InvalidInput) as exc:
        limits.check_name("x" * 17, "server name", 16)
    refusal(exc, "max_name_length", 16)
    for bad in ("a\x00b", "a\nb", "tab\there", "del\x7f", "c1\x85"):
        with pytest.raises(InvalidInput, match="control character"):
            limits.check_name(bad, "tag", 16)


def test_a_name_pattern_is_part_of_the_one_name_rule() -> None:
    import re

    lower = re.compile(r"^[a-z]+$")
    assert limits.check_name("hero", "model name", 8, pattern=lower, rule="lower-case letters") == "hero"
    with pytest.raises(InvalidInput, match="model name 'Hero': lower-case letters"):
        limits.check_name("Hero", "model name", 8, pattern=lower, rule="lower-case letters")
    with pytest.raises(InvalidInput) as exc:  # the length first, naming the limit it was given
        limits.check_name("x" * 9, "model name", 8, "registry.MAX_NAME_LENGTH", pattern=lower)
    refusal(exc, "registry.MAX_NAME_LENGTH", 8)


def test_every_bound_of_a_json_value_is_refused_naming_its_own_limit() -> None:
    bounds = {"max_string": limits.Limit("s.MAX", 3), "max_items": limits.Limit("i.MAX", 2),
              "max_key": limits.Limit("k.MAX", 4)}
    limits.check_json({"abcd": ["abc", "d"]}, "v", **bounds)
    for value, limit, n in (({"a": "abcd"}, "s.MAX", 3), ({"a": [1, 2, 3]}, "i.MAX", 2), ({"abcde": 1}, "k.MAX", 4)):
        with pytest.raises(InvalidInput) as exc:
            limits.check_json(value, "v", **bounds)
        refusal(exc, limit, n)
    # the request values: the settings' names (max_string_length, max_params, max_name_length)
    assert limits.Limit.setting(SETTINGS, "max_params") == ("max_params", 4)
    with pytest.raises(InvalidInput) as exc:
        limits.check_values({"k" * 17: 1}, "params", SETTINGS)
    refusal(exc, "max_name_length", 16)


def test_a_dataset_names_the_limits_of_its_captions(tmp_path: Path) -> None:
    from orchestrator.training.app import datasets as dataset_store
    from orchestrator.training.core.dataset import MAX_IMAGES

    store = LocalDiskStore(tmp_path / "objects")
    too_many = {f"a{i}": "x" for i in range(MAX_IMAGES + 1)}
    with pytest.raises(InvalidInput) as exc:  # refused before the session or the store is touched
        dataset_store.build(None, store, name="hero", trigger="t", captions=too_many, settings=SETTINGS)  # type: ignore[arg-type]
    refusal(exc, "dataset.MAX_IMAGES", MAX_IMAGES)
    with pytest.raises(InvalidInput) as exc:
        dataset_store.build(None, store, name="hero", trigger="t", captions={"a" * 257: "x"}, settings=SETTINGS)  # type: ignore[arg-type]
    refusal(exc, "limits.MAX_QUERY_LENGTH", limits.MAX_QUERY_LENGTH)
    with pytest.raises(InvalidInput, match="dataset name 'Hero': use lower-case"):
        dataset_store.build(None, store, name="Hero", trigger="t", settings=SETTINGS)  # type: ignore[arg-type]


def test_tags_are_stripped_deduplicated_counted_and_bounded() -> None:
    assert limits.check_tags([" a", "a", "", "b "], SETTINGS) == ["a", "b"]
    with pytest.raises(InvalidInput) as exc:
        limits.check_tags(["a", "b", "c", "d"], SETTINGS)
    refusal(exc, "max_tags", 3)
    with pytest.raises(InvalidInput) as exc:
        limits.check_tags(["t" * 17], SETTINGS)
    refusal(exc, "max_name_length", 16)
    with pytest.raises(InvalidInput, match="control character"):
        limits.check_tags(["evil\x00"], SETTINGS)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 2**63, -(2**63) - 1, 2**64, 10**400])
def test_numbers_are_finite_and_64_bit(value: float) -> None:
    with pytest.raises(InvalidInput) as exc:
        limits.check_params({"n": value}, SETTINGS)
    assert exc.value.extra["limit"] in ("finite_numbers", "int64")
    assert len(exc.value.message) < 300  # a huge integer is described, never printed whole


def test_the_64_bit_bounds_themselves_are_fine() -> None:
    limits.check_params({"lo": limits.INT64_MIN, "hi": limits.INT64_MAX, "x": 1e308, "b": True}, SETTINGS)


def test_parameters_are_counted_strings_bounded_and_nested_values_checked() -> None:
    with pytest.raises(InvalidInput) as exc:
        limits.check_params({f"p{i}": i for i in range(5)}, SETTINGS)
    refusal(exc, "max_params", 4)
    with pytest.raises(InvalidInput) as exc:
        limits.check_params({"prompt": "x" * 101}, SETTINGS)
    refusal(exc, "max_string_length", 100)
    with pytest.raises(InvalidInput, match="NUL"):
        limits.check_params({"prompt": "a\x00b"}, SETTINGS)
    with pytest.raises(InvalidInput, match="finite"):
        limits.check_params({"deep": [{"x": [math.nan]}]}, SETTINGS)
    with pytest.raises(InvalidInput) as exc:
        limits.check_params({"long": [1, 2, 3, 4, 5]}, SETTINGS)
    refusal(exc, "max_params", 4)
    nested: object = 1
    for _ in range(limits.MAX_DEPTH + 2):
        nested = [nested]
    with pytest.raises(InvalidInput, match="nested"):
        limits.check_json(nested, "graph")
    limits.check_params({"prompt": "x" * 100, "seed": 7, "cfg": 7.5, "ok": None}, SETTINGS)


def test_timeouts_are_finite_positive_and_capped() -> None:
    limits.check_timeout(None, SETTINGS)
    limits.check_timeout(60.0, SETTINGS)
    for bad in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(InvalidInput):
            limits.check_timeout(bad, SETTINGS)
    with pytest.raises(InvalidInput) as exc:
        limits.check_timeout(61.0, SETTINGS)
    refusal(exc, "max_timeout_s", 60.0)


def test_priority_and_timeout_of_every_path_that_queues() -> None:
    admission.check_job_fields(100, 60.0, SETTINGS)
    for bad in (101, -101, 2**64):
        with pytest.raises(InvalidInput, match="priority"):
            admission.check_job_fields(bad, None, SETTINGS)
    with pytest.raises(InvalidInput, match="timeout_s must be a finite number"):
        admission.check_job_fields(0, 1e400, SETTINGS)


def test_heartbeat_events_are_counted_bounded_and_a_nan_loss_is_kept_as_null() -> None:
    caps = Settings(max_heartbeat_events=2, max_string_length=100)
    check_events([{"kind": "progress", "step": 1, "total": 2, "loss": math.nan}], caps)
    assert finite_measures({"loss": math.inf, "eta_s": 3.0})["loss"] is None
    with pytest.raises(InvalidInput) as exc:
        check_events([{"kind": "log"}] * 3, caps)
    refusal(exc, "max_heartbeat_events", 2)
    for bad in ({"step": math.inf}, {"step": 2**64}, {"step": "1"}, {"step": -1}, {"kind": 5},
                {"message": "x" * 101}, {"step": True}):
        with pytest.raises(InvalidInput):
            check_events([bad], caps)


# -- media -------------------------------------------------------------------------------------------
LIMITS = media.MediaLimits(image_pixels=10_000, video_seconds=1.0, video_frames=20, video_pixels=64 * 48,
                           upload_bytes=1 << 20)


def inspect(tmp_path: Path, data: bytes, name: str, caps: media.MediaLimits = LIMITS) -> media.MediaInfo:
    path = tmp_path / name
    path.write_bytes(data)
    return media.inspect(path, name, caps)


def test_an_image_over_the_pixel_cap_is_refused_from_its_header(tmp_path: Path) -> None:
    assert inspect(tmp_path, png_bytes(100, 100), "ok.png") == media.MediaInfo("image/png", 100, 100)
    with pytest.raises(TooLarge) as exc:
        inspect(tmp_path, png_bytes(101, 100), "big.png")
    refusal(exc, "max_image_pixels", 10_000)


def test_a_decompression_bomb_is_refused_before_anything_is_decoded(tmp_path: Path) -> None:
    data = bomb_png()
    assert len(data) < 100
    for caps in (LIMITS, media.MediaLimits(100_000_000, 1, 1, 1, 1 << 20)):  # ours, and over Pillow's own guard
        with pytest.raises(TooLarge) as exc:
            inspect(tmp_path, data, "bomb.png", caps)
        refusal(exc, "max_image_pixels", caps.image_pixels)


def test_pillows_own_guard_is_never_changed_and_a_setting_above_it_is_capped(tmp_path: Path) -> None:
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    huge = media.MediaLimits(50 * before, 1, 1, 1, 1 << 20)  # a setting far above what Pillow opens
    with pytest.raises(TooLarge):
        inspect(tmp_path, bomb_png(), "bomb.png", huge)
    assert before == Image.MAX_IMAGE_PIXELS  # the guard of every other decode in the process is as it was
    assert media.image_pixel_cap(100_000_000, 89_478_485) == (100_000_000, "max_image_pixels")  # Pillow warns
    assert media.image_pixel_cap(500_000_000, 89_478_485) == (178_956_970, "pillow.bomb_limit")
    assert media.image_pixel_cap(500_000_000, 0) == (0, "pillow.bomb_limit")
    capped = media.MediaLimits.of(Settings(max_image_pixels=50 * before))
    assert (capped.image_pixels, capped.image_limit) == (2 * before, "pillow.bomb_limit")
    with pytest.raises(TooLarge) as exc:  # refused naming the limit that applied, not the setting
        inspect(tmp_path, bomb_png(), "bomb.png", capped)
    refusal(exc, "pillow.bomb_limit", 2 * before)
    assert "is above Pillow's decompression-bomb limit" in (media.pixel_cap_warning(
        Settings(max_image_pixels=50 * before)) or "")
    assert media.pixel_cap_warning(Settings()) is None  # the default (1e8) is within it


def test_an_image_between_pillows_warning_and_our_cap_is_ours_to_decide(tmp_path: Path) -> None:
    from PIL import Image

    side = 9500  # 90.25 Mpx: over Image.MAX_IMAGE_PIXELS (89.5 Mpx, a warning), under twice it
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    rows = b"".join(b"\x00" + bytes((side + 7) // 8) for _ in range(side))
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's guard, as it is
        info = inspect(tmp_path, data, "big.png", media.MediaLimits(100_000_000, 1, 1, 1, 1 << 30))
    assert (info.width, info.height) == (side, side)
    with pytest.raises(TooLarge) as exc, pytest.warns(Image.DecompressionBombWarning):
        inspect(tmp_path, data, "big.png", media.MediaLimits(90_000_000, 1, 1, 1, 1 << 30))
    refusal(exc, "max_image_pixels", 90_000_000)


def animation(fmt: str, frames: int, w: int = 40, h: int = 40) -> bytes:
    """An animated GIF, APNG or WebP of distinct frames (encoders merge identical ones)."""
    from PIL import Image

    images = [Image.new("RGB", (w, h), (i * 37 % 256, i * 91 % 256, 255 - i * 53 % 256)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format=fmt, save_all=True, append_images=images[1:], duration=40, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_is_capped_over_all_its_frames(tmp_path: Path, fmt: str) -> None:
    name = f"anim.{fmt.lower()}"
    ok = inspect(tmp_path, animation(fmt, 6), name)  # 6 x 40 x 40 = 9600 pixels: within 10 000
    assert (ok.content_type, ok.width, ok.height) == (f"image/{fmt.lower()}", 40, 40)
    with pytest.raises(TooLarge, match="7 frames of 40x40 = 11200 pixels") as exc:
        inspect(tmp_path, animation(fmt, 7), name)
    refusal(exc, "max_image_pixels", 10_000)
    with pytest.raises(TooLarge, match=r"an animation of (21|40) frames") as exc:  # tiny frames, too many
        inspect(tmp_path, animation(fmt, 40, 2, 2), name)
    refusal(exc, "max_video_frames", 20)


def test_frames_are_counted_only_as_far_as_the_limits_need(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "long.gif"
    path.write_bytes(animation("GIF", 60, 8, 8))
    with Image.open(path) as im:
        assert media.count_frames(im, 5) == 6  # stopped past the budget: not walked to the 60th frame
    with Image.open(path) as im:
        assert media.count_frames(im, 1000) == 60 == im.n_frames
    with Image.open(io.BytesIO(png_bytes(8, 8))) as im:
        assert media.count_frames(im, 0) == 1
    assert media.frame_budget(40, 40, LIMITS) == 6 and media.frame_budget(1, 1, LIMITS) == 20


def test_corrupt_images_are_422_and_other_bytes_are_typed_by_name(tmp_path: Path) -> None:
    good = png_bytes(64, 48)
    flipped = good[:60] + bytes([good[60] ^ 0xFF]) + good[61:]  # a byte of the pixel data: its CRC fails
    for name, data in (("cut.png", good[: len(good) // 2]), ("crc.png", flipped)):
        with pytest.raises(InvalidInput, match="does not decode"):
            inspect(tmp_path, data, name)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 48), (9, 9, 9)).save(jpeg, format="JPEG")
    for cut in (300, len(jpeg.getvalue()) - 10):  # in the header, in the pixel data
        with pytest.raises(InvalidInput, match="does not decode"):
            inspect(tmp_path, jpeg.getvalue()[:cut], "cut.jpg")
    assert inspect(tmp_path, b"not an image", "x.png").content_type == "application/octet-stream"
    assert inspect(tmp_path, b"not a video", "x.mp4").content_type == "application/octet-stream"
    assert inspect(tmp_path, b"hello", "notes.txt").content_type == "text/plain"


def test_videos_are_probed_by_content_and_capped(tmp_path: Path) -> None:
    info = inspect(tmp_path, mp4_bytes(frames=12, fps=24), "clip.bin")
    assert (info.content_type, info.width, info.height, info.frames) == ("video/mp4", 64, 48, 12)
    assert info.duration_s == pytest.approx(0.5)
    cases = [(mp4_bytes(frames=30, fps=60), "max_video_frames", 20),  # 0.5 s but 30 frames
             (mp4_bytes(frames=12, fps=10), "max_video_seconds", 1.0),  # 12 frames but 1.2 s
             (mp4_bytes(frames=2, w=128, h=48), "max_video_pixels", 64 * 48)]
    for data, limit, value in cases:
        with pytest.raises(TooLarge) as exc:
            inspect(tmp_path, data, "clip.mp4")
        refusal(exc, limit, value)


def test_check_video_and_check_image_are_the_rules() -> None:
    media.check_video(64, 48, 1.0, 20, LIMITS)
    media.check_video(64, 48, None, None, LIMITS)  # nothing stated: nothing to refuse here
    with pytest.raises(TooLarge, match="max_video_frames=20"):
        media.check_video(64, 48, None, 21, LIMITS)
    media.check_image(100, 100, LIMITS)
    with pytest.raises(TooLarge, match="max_image_pixels=10000"):
        media.check_image(10_001, 1, LIMITS)
    media.check_image(50, 10, LIMITS, frames=20)
    with pytest.raises(TooLarge, match="an animation of 21 frames, over the limit max_video_frames=20"):
        media.check_image(10, 10, LIMITS, frames=21)
    with pytest.raises(TooLarge, match="3 frames of 100x40 = 12000 pixels, over the limit max_image_pixels=10000"):
        media.check_image(100, 40, LIMITS, frames=3)


def test_file_names_are_their_last_part_printable_and_bounded() -> None:
    assert media.check_filename("../../etc/passwd") == "passwd"
    assert media.check_filename("C:\\Users\\me\\frame.png") == "frame.png"
    with pytest.raises(InvalidInput, match="control character"):
        media.check_filename('a"\r\nSet-Cookie: x.png')
    with pytest.raises(InvalidInput, match="max_filename_length=255"):
        media.check_filename("x" * 256 + ".png")


def test_a_spooled_upload_over_the_byte_cap_stops_at_once_and_leaves_no_file(tmp_path: Path) -> None:
    caps = media.MediaLimits(1, 1, 1, 1, upload_bytes=1000)
    read: list[int] = []

    def chunks():  # noqa: ANN202
        for i in range(100):
            read.append(i)
            yield b"x" * 600

    with pytest.raises(TooLarge) as exc, media.spooled(chunks(), caps, tmp_path / "spool"):
        pass
    refusal(exc, "max_upload_bytes", 1000)
    assert len(read) == 2 and not list((tmp_path / "spool").iterdir())
    with media.spooled(b"abc", caps, tmp_path / "spool") as spool:
        assert spool.size == 3 and spool.path.read_bytes() == b"abc"
    assert not spool.path.exists()


# -- server URLs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:8188\x00", "control character"), ("http://gpu 1:8188", "space"),
    ("http://" + "a" * 100_000, "max_server_url_length=2048"), ("ftp://gpu1", "http:// or https://"),
    ("gpu1:8188", "http:// or https://"), ("http://gpu1/?x=1", "no query"), ("http://gpu1/#top", "no query"),
    ("http://gpu1:0", "outside 1..65535"), ("http://gpu1:65536", "outside 1..65535"), ("http://", "no host"),
    ("http://gpu1:port", "not a URL"), ("http://-gpu-/", "not a host name"), ("", "non-empty"),
])
def test_bad_server_urls_are_refused_with_the_rule(url: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as exc:
        parse_server_url(url)
    assert len(exc.value.message) < 400  # never the whole 100 KB back


def test_server_urls_have_one_canonical_form() -> None:
    assert canonical("HTTP://GPU1:80/") == "http://gpu1"
    assert canonical("https://gpu1:443/comfy/") == "https://gpu1/comfy"
    assert canonical("http://[::1]:8188") == "http://[::1]:8188"
    assert canonical("http://alice:pw@gpu1:8188") == "http://alice:pw@gpu1:8188"
    assert parse_server_url("http://alice:pw@gpu1:8188/x").default_name == "gpu1:8188/x"  # no credentials
    assert canonical("http://gpu1/?") is None


def test_credentials_are_redacted_wherever_a_url_appears() -> None:
    assert redact("http://alice:s3cret@gpu1:8188") == "http://alice:***@gpu1:8188"
    assert redact("https://tok3n@gpu1/x") == "https://***@gpu1/x"
    line = "GET http://alice:s3cret@gpu1:8188/prompt failed; ws://bob:pw@gpu2/ws; mail me@example.com"
    assert redact(line) == "GET http://alice:***@gpu1:8188/prompt failed; ws://bob:***@gpu2/ws; mail me@example.com"
    assert redact_value({"error": ["http://a:b@h"], "n": 1}) == {"error": ["http://a:***@h"], "n": 1}
    assert redact("http://gpu1:8188") == "http://gpu1:8188"


def test_server_addresses_are_compared_in_one_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """One lookup (the node pack's ``urls.resolve``); zones dropped, IPv4-mapped as IPv4; unresolvable: none."""
    from custom_nodes import urls

    asked = []

    def lookup(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host == "gone.lab":
            raise urls.UrlRefused("host 'gone.lab' cannot be resolved")
        return ["fe80::1%eth0", "::ffff:10.0.0.5", "10.0.0.5"]

    monkeypatch.setattr(urls, "resolve", lookup)
    assert dns.server_addresses(parse_server_url("http://gpu1.lab:8188")) == {"fe80::1", "10.0.0.5"}
    assert dns.server_addresses(parse_server_url("http://gone.lab")) == frozenset()
    assert dns.server_addresses(parse_server_url("http://[::ffff:127.0.0.1]:8188")) == {"127.0.0.1"}  # no lookup
    assert asked == [("gpu1.lab", 8188), ("gone.lab", 80)]


def test_one_server_under_two_names_is_found_by_address() -> None:
    local, ip = parse_server_url("http://localhost:8188"), parse_server_url("http://127.0.0.1:8188")
    assert same_server(local, dns.server_addresses(local), ip, dns.server_addresses(ip))
    assert dns.server_addresses(parse_server_url("http://[::ffff:127.0.0.1]:8188")) == {"127.0.0.1"}  # as IPv4
    assert not same_server(local, ALL, parse_server_url("http://127.0.0.1:8189"), ALL)  # another port
    assert not same_server(ip, ALL, parse_server_url("http://127.0.0.1:8188/other"), ALL)  # another path
    shared = frozenset({"10.0.0.5"})  # two DNS names on one address: virtual hosts of one proxy
    assert not same_server(parse_server_url("https://gpu1.lab"), shared, parse_server_url("https://gpu2.lab"), shared)
    assert same_server(parse_server_url("https://gpu1.lab"), shared, parse_server_url("https://10.0.0.5"), shared)
    assert same_server(parse_server_url("http://gpu1"), frozenset(), parse_server_url("https://gpu1:80"), frozenset())
    registered = [("a", ip, ALL), ("b", parse_server_url("http://127.0.0.1:9000"), ALL)]
    assert duplicate_of(local, ALL, registered) == "a"
    assert duplicate_of(parse_server_url("http://127.0.0.1:9001"), ALL, registered) is None


# -- the store paths: refused uploads leave nothing, deletes in the right order ------------------------
def objects(store_root: Path) -> list[Path]:
    return [p for p in (store_root / "sha256").rglob("*") if p.is_file()] if (store_root / "sha256").exists() else []


def test_a_refused_upload_leaves_no_object_and_no_row(db: Database, tmp_path: Path) -> None:  # noqa: F811
    store = LocalDiskStore(tmp_path / "objects")
    caps = Settings(home=tmp_path / "home", max_image_pixels=10_000)
    with db.session() as s:
        for data, name, error in ((bomb_png(), "bomb.png", TooLarge), (png_bytes(200, 200), "big.png", TooLarge),
                                  (png_bytes(64, 48)[:60], "cut.png", InvalidInput)):
            with pytest.raises(error):
                artifact_app.store_input(s, store, data, name, settings=caps)
        with pytest.raises(InvalidInput, match="max_tags"):
            artifact_app.store_input(s, store, png_bytes(8, 8), "ok.png", [f"t{i}" for i in range(40)], settings=caps)
        assert objects(tmp_path / "objects") == [] and s.exec(select(Artifact)).all() == []
        assert list((tmp_path / "home" / "spool").iterdir()) == []
        art = artifact_app.store_input(s, store, png_bytes(8, 8), "ok.png", ["a"], settings=caps)
        assert (art.content_type, art.width) == ("image/png", 8) and len(objects(tmp_path / "objects")) == 1


class WatchedStore(LocalDiskStore):
    """A real local store that notes how many pooled database connections are checked out while it stores."""

    def __init__(self, root: Path, database: Database) -> None:
        super().__init__(root)
        self.db, self.seen = database, []

    def put_file(self, path: Path, sha256: str | None = None, move: bool = False):  # noqa: ANN201
        self.seen.append(self.db.engine.pool.checkedout())
        return super().put_file(path, sha256, move)


class WatchedUpload(io.BytesIO):
    """An upload's body, read in small pieces, noting the checked-out connections at every read."""

    def __init__(self, data: bytes, database: Database, seen: list[int]) -> None:
        super().__init__(data)
        self.db, self.seen = database, seen

    def read(self, n: int | None = -1) -> bytes:
        self.seen.append(self.db.engine.pool.checkedout())
        return super().read(min(n, 64) if n and n > 0 else 64)


def test_no_database_connection_is_held_while_an_upload_is_read_or_stored(db: Database, tmp_path: Path) -> None:  # noqa: F811
    """A multi-GB upload holds no pooled connection: about fifteen at once would empty a PostgreSQL pool."""
    store = WatchedStore(tmp_path / "objects", db)
    reads: list[int] = []
    data = png_bytes(32, 32)
    with db.session() as s:
        assert s.exec(select(Artifact)).all() == []  # a read of the caller (the CLI's, say): its transaction is open
        assert db.engine.pool.checkedout() == 1
        art = artifact_app.store_input(s, store, WatchedUpload(data, db, reads), "a.png", ["x"])
        assert len(reads) > 2 and set(reads) == {0} and store.seen == [0]  # read in pieces, none holding one
        again = artifact_app.store_input(s, store, WatchedUpload(data, db, reads), "b.png", ["y"])
        assert again.id == art.id and store.seen == [0] and set(reads) == {0}  # the same bytes: stored once
        assert artifact_db.artifact_tags(s, art.id) == ["x", "y"]


def test_a_tagged_artifact_is_deleted_and_a_referenced_one_is_409(db: Database, tmp_path: Path) -> None:  # noqa: F811
    store = LocalDiskStore(tmp_path / "objects")
    with db.session() as s:
        tagged = artifact_app.store_input(s, store, png_bytes(8, 8), "a.png", ["x", "y"])
        artifact_app.delete_artifact(s, store, tagged.id)
        assert s.get(Artifact, tagged.id) is None and s.exec(select(ArtifactTag)).all() == []
        assert objects(tmp_path / "objects") == []
        image = artifact_app.store_input(s, store, png_bytes(9, 9), "b.png", ["x"])
        derived = Artifact(origin="dataset:test", key=image.key, sha256="0" * 64, size=1, content_type="x",
                           filename="hero-v1.tar", role="dataset", input_artifacts=[image.id])
        lora_file = artifact_app.store_input(s, store, b"weights", "hero.safetensors")
        s.add(derived)
        s.add(LoraModel(sha256="1" * 64, name="hero", version=1, filename="hero-v1.safetensors",
                        trigger_words=[], artifact_id=lora_file.id, size=7))
        s.commit()
        with pytest.raises(Conflict, match=f"lineage of 1 artifact.*dataset {derived.id}"):
            artifact_app.delete_artifact(s, store, image.id)
        with pytest.raises(Conflict, match="hero-v1.safetensors"):
            artifact_app.delete_artifact(s, store, lora_file.id)
        assert s.get(Artifact, image.id) is not None and artifact_db.artifact_tags(s, image.id) == ["x"]


def test_an_object_the_store_lost_is_404_naming_the_artifact(tmp_path: Path) -> None:
    store = LocalDiskStore(tmp_path / "objects")
    obj = store.put_stream([b"bytes"])
    art = Artifact(id="a1", origin="input:x", key=obj.key, sha256=obj.sha256, size=5, content_type="x",
                   filename="f.bin")
    store.delete(obj.key)
    with pytest.raises(NotFound, match="a1 .*missing from the object store") as exc:
        artifact_db.open_artifact(store, art)
    assert exc.value.extra == {"artifact": "a1"}


# -- server registration on the database ---------------------------------------------------------------
def test_registration_validates_before_saving_and_refuses_a_second_name(db: Database) -> None:  # noqa: F811
    with db.session() as s:
        row = server_app.register_server(s, "http://127.0.0.1:8188/", settings=SETTINGS)
        assert (row.url, row.name) == ("http://127.0.0.1:8188", "127.0.0.1:8188")
        for url in ("http://127.0.0.1:8188\x00", "http://" + "h" * 3000, "ftp://127.0.0.1", "http://h/?q"):
            with pytest.raises(InvalidInput):
                server_app.register_server(s, url, settings=SETTINGS)
        with pytest.raises(Conflict, match="'127.0.0.1:8188' under another name") as exc:
            server_app.register_server(s, "http://localhost:8188", "other", settings=SETTINGS)
        assert exc.value.extra == {"server": "127.0.0.1:8188"}
        with pytest.raises(InvalidInput, match="max_name_length=16"):
            server_app.register_server(s, "http://127.0.0.1:9000", "n" * 17, settings=SETTINGS)
        assert server_app.register_server(s, "HTTP://127.0.0.1:8188", settings=SETTINGS).id == row.id  # merged
        assert server_db.get_server(s, "http://127.0.0.1:8188/").id == row.id  # any spelling finds it
        secret = server_app.register_server(s, "http://alice:pw@127.0.0.1:9000", settings=SETTINGS)
        assert secret.name == "127.0.0.1:9000"  # the default name holds no credentials
        assert [r.url for r in server_db.server_rows(s)] == ["http://127.0.0.1:8188", "http://alice:pw@127.0.0.1:9000"]


def test_configured_servers_are_validated_and_a_duplicate_is_skipped(db: Database, tmp_path: Path,  # noqa: F811
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from orchestrator.bootstrap import register_configured

    with db.session() as s:
        register_configured(s, Settings(comfy_servers=["http://127.0.0.1:8188", "http://localhost:8188/"]))
        assert [r.url for r in server_db.server_rows(s)] == ["http://127.0.0.1:8188"]
        assert "configured server http://localhost:8188/ skipped" in caplog.text
        with pytest.raises(InvalidInput, match="MEDIALAB_COMFY_SERVERS: server URL"):
            register_configured(s, Settings(comfy_servers=["http://a:pw@gpu\x00:8188"]))
        servers_file = tmp_path / "servers.toml"
        servers_file.write_text('[[server]]\nname = "gpu"\nurl = 8188\n')
        with pytest.raises(InvalidInput, match="url and name are strings"):
            register_configured(s, Settings(servers_file=servers_file))
        assert len(server_db.server_rows(s)) == 1
