"""A deterministic writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.

Writing the archive ourselves (instead of running ``cpio``) lets an unprivileged build create device nodes and
root-owned files, and makes the output byte-for-byte reproducible: entries are sorted, times are zero.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, e: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write(out: BinaryIO, entries: list[Entry]) -> None:
    """Write ``entries`` sorted by path (parents before children) followed by the trailer."""
    seen: set[str] = set()
    ino = 1
    for e in sorted(entries, key=lambda e: e.path):
        if e.path in seen:
            raise ValueError(f"duplicate cpio entry {e.path}")
        seen.add(e.path)
        _write_one(out, ino, e)
        ino += 1
    _write_one(out, 0, Entry("TRAILER!!!", 0))


def _write_one(out: BinaryIO, ino: int, e: Entry) -> None:
    name = e.path.encode()
    head = _header(ino, e, name) + name + b"\0"
    out.write(head + _pad(len(head)))
    out.write(e.data + _pad(len(e.data)))
