from pathlib import Path

import pytest

from storage import LocalDiskStore, key_for


def test_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    store = LocalDiskStore(tmp_path / "objects")
    a = store.put_stream([b"hello ", b"world"])
    assert a.key == key_for(a.sha256) and a.size == 11
    assert a.sha256 == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello world")
    assert store.put_file(src) == a
    with store.open(a.key) as f:
        assert f.read() == b"hello world"
    files = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert files == [store.local_path(a.key)]  # stored once, no temp files left


def test_failed_stream_leaves_nothing(tmp_path: Path) -> None:
    store = LocalDiskStore(tmp_path / "objects")

    def broken():  # noqa: ANN202
        yield b"partial"
        raise ConnectionError("server died")

    with pytest.raises(ConnectionError):
        store.put_stream(broken())
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]


def test_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    store = LocalDiskStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        store.open("sha256/../../etc/passwd")


def test_put_file_takes_a_moved_file_and_leaves_a_callers_file(tmp_path: Path) -> None:
    store = LocalDiskStore(tmp_path / "objects")
    mine, theirs = tmp_path / "spool", tmp_path / "theirs.png"
    mine.write_bytes(b"spooled bytes")
    theirs.write_bytes(b"the user's own file")
    a = store.put_file(mine, move=True)
    b = store.put_file(theirs)
    assert not mine.exists() and theirs.read_bytes() == b"the user's own file"
    assert store.open(a.key).read() == b"spooled bytes" and store.exists(b.key)
    assert not list((tmp_path / "objects" / "tmp").iterdir())
