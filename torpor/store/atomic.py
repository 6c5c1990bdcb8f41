"""Crash-safe file writes: a reader sees the old content or the new, never a mixture."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fsync_file(path)


def fsync_file(path: Path) -> None:
    """Flush what was written to ``path`` (a file or a directory) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode(), mode)


class Writeback:
    """While open, has the kernel write the files' dirty pages to the disk every ``period`` seconds.

    Without it a save's fsync starts the whole write-out only after QEMU has written the state; pushed while QEMU
    writes, the two overlap.  Measured here (1 GiB guest, 200 MiB of random data,
    mapped-ram, five saves each, interleaved): stop to state completed and fsynced 0.42-0.46 s plain, 0.27-0.31 s
    with the write-out pushed every 5 or 20 ms alike.  Files that do not exist yet are created empty (mode 0600);
    with no files it does nothing (no thread).
    """

    def __init__(self, paths: Iterable[Path], period: float = 0.01) -> None:
        self._paths = list(paths)
        self._fds: list[int] = []
        self._period = period
        self._done = threading.Event()

    def __enter__(self) -> Writeback:
        try:
            for p in self._paths:
                self._fds.append(os.open(p, os.O_RDONLY | os.O_CREAT, 0o600))
        except BaseException:
            for fd in self._fds:
                os.close(fd)
            raise
        if self._fds:
            threading.Thread(target=self._run, name="writeback", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()  # not joined: a call under way may wait for the disk queue, the caller need not

    def _run(self) -> None:
        try:
            push = _start_writeback()
            while push is not None:
                for fd in self._fds:
                    push(fd)
                if self._done.wait(self._period):
                    return
        finally:
            for fd in self._fds:
                os.close(fd)


def _start_writeback() -> Callable[[int], object] | None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``: start writing a file's dirty pages, without waiting
    (Linux; None where libc has no such call)."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except AttributeError:
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd: call(fd, 0, 0, 2)
