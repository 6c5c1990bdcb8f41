"""Fetch images by location (local path, ``file://``, ``http(s)://``) into the cache, verifying their digests.

A download goes to a partial file beside its final place and is renamed only once complete and verified, so a
mismatched digest or an interrupted transfer leaves nothing that a later run could mistake for the image; an
interrupted download is resumed from where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from torpor import subp
from torpor.errors import ImageError

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]


def cache_path(cache: Path, location: str, digest: str | None = None) -> Path:
    """Where ``location`` is cached: one entry per location and digest (a location whose digest changed in the
    YAML is another image)."""
    key = hashlib.sha256(f"{location}\n{digest or ''}".encode()).hexdigest()
    return cache / "download" / "by-url-sha256" / key / "data"


def _algorithm(digest: str | None) -> str:
    """The hash a digest is written in: sha256 (also without a digest) or sha512, as Lima's image lists give."""
    return digest.split(":", 1)[0] if digest else "sha256"


def _digest_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def _is_http(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https")


def _open(location: str, offset: int = 0) -> tuple[BinaryIO, int | None, int]:
    """``location`` opened for reading from ``offset`` where the server can resume there (HTTP Range), else from
    the start; its total size if known, and the offset it reads from."""
    if _is_http(location):
        request = urllib.request.Request(location, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            resp = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            if offset and e.code == 416:  # (the partial download is not a prefix of what is there now)
                return _open(location)
            raise ImageError(f"cannot download {location}: {e}") from None
        except OSError as e:
            raise ImageError(f"cannot download {location}: {e}") from None
        length = resp.headers.get("Content-Length")
        start = offset if offset and resp.status == 206 else 0
        return resp, start + int(length) if length else None, start
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "":
        path = Path(location).expanduser()
    else:
        raise ImageError(f"unsupported image location {location!r}", hint="use a path, file:// or http(s)://")
    try:
        f = path.open("rb")
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}") from None
    return f, path.stat().st_size, 0


PARTIAL = "data.partial"  # an interrupted download, resumed by the next fetch of the same location and digest


def fetch(location: str, digest: str | None, cache: Path, progress: Progress | None = None) -> Path:
    """Return the cached copy of ``location``, downloading (and verifying ``digest``) if needed.

    A download goes to ``data.partial`` beside its place; one that stops half-way (a dropped connection, Ctrl-C)
    is resumed from where it stopped by the next fetch, where the server honours HTTP Range requests.
    """
    import fcntl
    import http.client

    dest = cache_path(cache, location, digest)
    algorithm = _algorithm(digest)

    def cached() -> bool:
        return dest.exists() and (digest is None or _digest_file(dest, algorithm) == digest)

    if cached():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(dest.parent, os.O_RDONLY)  # (the entry's directory is the lock: nothing left behind)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch of an entry at a time; a second waits, then finds it
        if cached():
            return dest
        partial = dest.with_name(PARTIAL)
        kept = partial.stat().st_size if partial.exists() and _is_http(location) else 0
        src, total, done = _open(location, kept)
        h = hashlib.new(algorithm)
        if done:
            with partial.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        try:
            with src, partial.open("ab" if done else "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException) as e:
            if not _is_http(location):
                partial.unlink(missing_ok=True)
                raise ImageError(f"cannot read image {location}: {e}") from None
            raise ImageError(
                f"the download of {location} stopped after {done} bytes ({e or type(e).__name__})",
                hint="start again: the download resumes where it stopped",
            ) from None
        if total is not None and done != total:
            raise ImageError(
                f"the download of {location} stopped after {done} of {total} bytes",
                hint="start again: the download resumes where it stopped",
            )
        got = f"{algorithm}:{h.hexdigest()}"
        if digest is not None and got != digest:
            partial.unlink(missing_ok=True)
            raise ImageError(
                f"digest mismatch for {location}: expected {digest}, got {got}",
                hint="the image changed or is corrupt; check the location and the digest in the YAML",
            )
        os.replace(partial, dest)
        (dest.parent / "url").write_text(location + "\n")
    finally:
        os.close(lock)
    return dest


# Compressed images, decompressed once into the cache: by the location's suffix, as Lima reads them.
COMPRESSED = (".xz", ".gz", ".bz2", ".zst")


def fetch_image(location: str, digest: str | None, cache: Path, progress: Progress | None = None) -> Path:
    """A disk image ready to be a base disk: fetched (``digest`` checks what was fetched, compressed or not),
    decompressed once where the location ends in .xz, .gz, .bz2 or .zst, and a raw image converted to qcow2 once
    (the instance's disk is a qcow2 overlay over it).  Each step's result is cached beside the download."""
    data = fetch(location, digest, cache, progress)
    suffix = next((s for s in COMPRESSED if urllib.parse.urlparse(location).path.endswith(s)), None)
    if suffix is not None:
        data = _once(data.with_name("decompressed"), lambda tmp: _decompress(data, tmp, suffix, location))
    info = _info(data)
    if info.get("backing-filename"):
        # (a qcow2 header naming a host file would have QEMU read that file as the guest's disk)
        raise ImageError(
            f"{location} is a qcow2 overlay of {info['backing-filename']!r}, not an image of its own",
            hint="use a standalone image (`qemu-img convert -O qcow2 IMAGE OUT` makes one)",
        )
    fmt = str(info.get("format", "raw"))
    if fmt not in ("raw", "qcow2"):
        raise ImageError(f"{location} is a {fmt} image", hint="torpor takes qcow2 and raw images, as Lima does")
    if fmt == "raw":
        data = _once(data.with_name("image.qcow2"), lambda tmp: _to_qcow2(data, tmp))
    return data


def _once(dest: Path, make: Callable[[Path], None]) -> Path:
    """``dest``, made by ``make`` into a temporary file and renamed into place unless it exists already."""
    if dest.exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
    try:
        make(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _decompress(src: Path, dest: Path, suffix: str, location: str) -> None:
    if suffix == ".zst":
        if shutil.which("zstd") is None:
            raise ImageError(f"{location} is zstd-compressed and zstd is not installed", hint="apt install zstd")
        subp.run(["zstd", "-q", "-d", "-f", "-o", str(dest), str(src)])
        return
    import bz2
    import gzip
    import lzma

    module: Any = {".xz": lzma, ".gz": gzip, ".bz2": bz2}[suffix]  # (each has open(path, "rb"))
    try:
        with module.open(src, "rb") as f, dest.open("wb") as out:
            while chunk := f.read(CHUNK):
                _write_sparse(out, chunk)
            out.truncate()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ImageError(
            f"cannot decompress {location}: {e}", hint="the download is damaged or not compressed"
        ) from None


HOLE = 64 << 10
ZEROS = bytes(HOLE)


def _write_sparse(out: BinaryIO, data: bytes) -> None:
    """``data`` written at ``out``'s position, its all-zero 64 KiB blocks left as holes (a disk image is mostly
    unwritten; the caller truncates the file to its end)."""
    view = memoryview(data)
    for i in range(0, len(data), HOLE):
        block = view[i : i + HOLE]
        if block == ZEROS[: len(block)]:
            out.seek(len(block), os.SEEK_CUR)
        else:
            out.write(block)


def _info(path: Path) -> dict[str, Any]:
    import json

    info: dict[str, Any] = json.loads(subp.run(["qemu-img", "info", "--output=json", str(path)]).stdout)
    return info


def _to_qcow2(src: Path, dest: Path) -> None:
    subp.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(src), str(dest)])


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done != total:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-6) / 1e6
        width = shutil.get_terminal_size().columns
        if total:
            frac = done / total
            bar = "#" * int(frac * 30)
            line = f"{self.label} [{bar:<30}] {frac:6.1%} {rate:6.1f} MB/s"
        else:
            line = f"{self.label} {done / 1e6:.1f} MB {rate:6.1f} MB/s"
        sys.stderr.write("\r" + line[: width - 1])
        if total and done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
