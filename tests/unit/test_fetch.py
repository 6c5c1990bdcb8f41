import hashlib
from collections.abc import Callable
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


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".bz2", ".zst"])
def test_compressed_raw_image_is_decompressed_and_converted_once(tmp_path: Path, suffix: str) -> None:
    import bz2
    import gzip
    import json
    import lzma
    import shutil
    import subprocess

    raw = (b"boot" * 128).ljust(1 << 20, b"\0") + bytes(1 << 20) + b"end of disk".ljust(1 << 20, b"\0")
    src = tmp_path / f"disk.raw{suffix}"
    if suffix == ".zst":
        if shutil.which("zstd") is None:
            pytest.skip("zstd is not installed")
        (tmp_path / "disk.raw").write_bytes(raw)
        subprocess.run(["zstd", "-q", str(tmp_path / "disk.raw"), "-o", str(src)], check=True)
    else:
        compress: dict[str, Callable[[bytes], bytes]] = {
            ".xz": lzma.compress,
            ".gz": gzip.compress,
            ".bz2": bz2.compress,
        }
        src.write_bytes(compress[suffix](raw))
    digest = "sha512:" + hashlib.sha512(src.read_bytes()).hexdigest()  # (of the file as fetched, as in Lima)
    cache = tmp_path / "cache"
    got = fetch.fetch_image(str(src), digest, cache)
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", got], capture_output=True, check=True).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == len(raw)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", got, back], check=True)
    assert back.read_bytes() == raw
    mtime = got.stat().st_mtime_ns
    assert fetch.fetch_image(str(src), digest, cache) == got and got.stat().st_mtime_ns == mtime  # once
    decompressed = got.with_name("decompressed")
    assert decompressed.stat().st_size == len(raw)
    assert decompressed.stat().st_blocks * 512 < len(raw) // 2  # its unwritten blocks holes


def test_damaged_compressed_image_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "disk.img.xz"
    src.write_bytes(b"not xz at all")
    with pytest.raises(ImageError, match=r"cannot decompress .*disk\.img\.xz"):
        fetch.fetch_image(str(src), None, tmp_path / "cache")


def test_each_location_is_tried_in_order(tmp_path: Path) -> None:
    from torpor.config.layering import load_effective
    from torpor.guest import images

    good = tmp_path / "good.qcow2"
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", good, "1M"], check=True)
    text = (
        f"images:\n  - {{location: {tmp_path}/missing.qcow2}}\n"
        f"  - {{location: {good}, digest: 'sha256:{'0' * 64}'}}\n"
        f"  - {{location: {good}, arch: aarch64}}\n"
        f"  - {{location: {good}}}\n"
    )
    cfg = load_effective(tmp_path, text, "i.yaml").config
    told: list[str] = []
    inst = tmp_path / "inst"
    inst.mkdir()
    base = images.prepare(inst, cfg, tmp_path / "cache", told.append, show_progress=False)
    assert base is not None and base.read_bytes() == good.read_bytes()
    assert [t.split(":")[0] for t in told] == ["image 1 of 3 failed", "image 2 of 3 failed"]
    assert "missing.qcow2" in told[0] and "digest mismatch" in told[1]
    with pytest.raises(ImageError, match="none of the 2 images for x86_64"):
        images.prepare(
            inst,
            load_effective(tmp_path, "\n".join(text.splitlines()[:3]), "i").config,
            tmp_path / "cache",
            told.append,
            show_progress=False,
        )


def test_torpor_s_built_guests_are_x86_64_only(tmp_path: Path) -> None:
    from torpor.config.layering import load_effective
    from torpor.guest import images

    cfg = load_effective(tmp_path, "arch: aarch64\nimages: [{location: 'build:default'}]\n", "i.yaml").config
    with pytest.raises(ImageError, match="for x86_64 only, not aarch64") as e:
        images.prepare(tmp_path, cfg, tmp_path / "cache", lambda _m: None, show_progress=False)
    assert "cloud image for aarch64" in (e.value.hint or "")


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    import http.server
    import threading

    payload = bytes(range(256)) * 8192  # 2 MiB
    digest = "sha512:" + hashlib.sha512(payload).hexdigest()
    ranges: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked = self.headers.get("Range")
            ranges.append(asked)
            start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            if len(ranges) == 1:  # the first transfer drops half-way
                self.wfile.write(payload[: len(payload) // 2 + 123])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(payload[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/disk.img"
    try:
        with pytest.raises(ImageError, match="stopped after") as e:
            fetch.fetch(url, digest, tmp_path)
        assert "resumes" in (e.value.hint or "")
        seen: list[tuple[int, int | None]] = []
        got = fetch.fetch(url, digest, tmp_path, lambda done, total: seen.append((done, total)))
    finally:
        server.shutdown()
    assert got.read_bytes() == payload
    kept = len(payload) // 2 + 123
    assert ranges == [None, f"bytes={kept}-"]
    assert seen[-1] == (len(payload), len(payload))
    assert not got.with_name(fetch.PARTIAL).exists()


def test_an_image_that_is_an_overlay_of_a_host_file_is_refused(tmp_path: Path) -> None:
    import subprocess

    secret = tmp_path / "host-secret"
    secret.write_bytes(b"not for the guest")
    overlay = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", overlay], check=True)
    with pytest.raises(ImageError, match=r"qcow2 overlay of .*host-secret"):
        fetch.fetch_image(str(overlay), None, tmp_path / "cache")
    vmdk = tmp_path / "image.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", vmdk, "1M"], check=True)
    with pytest.raises(ImageError, match="is a vmdk image"):
        fetch.fetch_image(str(vmdk), None, tmp_path / "cache")
