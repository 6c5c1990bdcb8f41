import hashlib
from pathlib import Path

import pytest

from torpor.errors import ImageError
from torpor.guest import fetch


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_fetch_local_path_and_file_url_with_digest(tmp_path: Path) -> None:
    src = tmp_path / "img.qcow2"
    src.write_bytes(b"image-bytes" * 1000)
    cache = tmp_path / "cache"
    seen: list[tuple[int, int | None]] = []
    got = fetch.fetch(str(src), digest(src.read_bytes()), cache, lambda d, t: seen.append((d, t)))
    assert got.read_bytes() == src.read_bytes()
    assert seen[-1] == (11000, 11000)
    got2 = fetch.fetch(f"file://{src}", None, cache)
    assert got2.read_bytes() == src.read_bytes()


def test_digest_mismatch_keeps_nothing(tmp_path: Path) -> None:
    src = tmp_path / "img"
    src.write_bytes(b"real")
    cache = tmp_path / "cache"
    with pytest.raises(ImageError, match="digest mismatch"):
        fetch.fetch(str(src), digest(b"other"), cache)
    leftovers = [p for p in cache.rglob("*") if p.is_file()]
    assert leftovers == []


def test_cached_copy_with_wrong_digest_is_fetched_again(tmp_path: Path) -> None:
    src = tmp_path / "img"
    src.write_bytes(b"v1")
    cache = tmp_path / "cache"
    fetch.fetch(str(src), None, cache)
    src.write_bytes(b"v2")
    assert fetch.fetch(str(src), digest(b"v2"), cache).read_bytes() == b"v2"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read image"):
        fetch.fetch(str(tmp_path / "nope"), None, tmp_path / "cache")


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unsupported"):
        fetch.fetch("ftp://example.invalid/x", None, tmp_path)


def test_sha512_digest_as_lima_lists_give(tmp_path: Path) -> None:
    img = tmp_path / "img.raw"
    img.write_bytes(b"debian")
    good = "sha512:" + hashlib.sha512(b"debian").hexdigest()
    assert fetch.fetch(str(img), good, tmp_path / "cache").read_bytes() == b"debian"
    with pytest.raises(ImageError, match="digest mismatch"):
        fetch.fetch(str(img), "sha512:" + "0" * 128, tmp_path / "cache2")
