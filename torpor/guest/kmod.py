"""Kernel module metadata read straight from ``.ko`` files, so no ``depmod`` is needed on the build host."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Set
from pathlib import Path

from torpor.errors import ImageError


def modinfo(ko: bytes) -> dict[str, str]:
    """Parse the ``.modinfo`` section of an ELF64 little-endian kernel module (first value wins per key)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not an ELF64 little-endian object")
    shoff = struct.unpack_from("<Q", ko, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name_off, off, size = section(i)
        end = ko.index(b"\0", stroff + name_off)
        if ko[stroff + name_off : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[off : off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep and key not in info:
                    info[key] = value
            return info
    return {}


def index_modules(moddir: Path) -> dict[str, Path]:
    """Map module names (``virtio_blk``) to their ``.ko`` files under a ``lib/modules/VERSION`` directory."""
    return {p.name.removesuffix(".ko").replace("-", "_"): p for p in moddir.rglob("*.ko")}


def builtin_modules(moddir: Path) -> set[str]:
    builtin = moddir / "modules.builtin"
    if not builtin.exists():
        return set()
    return {Path(line).name.removesuffix(".ko").replace("-", "_") for line in builtin.read_text().split()}


def load_order(wanted: Iterable[str], available: Mapping[str, Path], builtin: Set[str] = frozenset()) -> list[str]:
    """Return the wanted modules and everything they depend on, each after its dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str | None) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin:
            return
        if name in visiting:
            raise ImageError(f"kernel module dependency cycle at {name}")
        path = available.get(name)
        if path is None:
            by = f" (needed by {wanted_by})" if wanted_by else ""
            raise ImageError(f"kernel module {name} not found in the kernel package{by}")
        visiting.add(name)
        deps = modinfo(path.read_bytes()).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(dep, name)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(w, None)
    return order
