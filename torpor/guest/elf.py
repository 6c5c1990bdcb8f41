"""Just enough ELF reading to copy a dynamically linked program with the libraries it needs (no ``ldd``).

Reads the program interpreter, ``DT_NEEDED`` and ``DT_RUNPATH``/``DT_RPATH`` of ELF64 little-endian files, and
resolves sonames inside an unpacked package tree the way the dynamic loader would on the guest.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from torpor.errors import ImageError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 1, 5, 15, 29
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64")


@dataclass(frozen=True)
class Dynamic:
    interp: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def dynamic(data: bytes) -> Dynamic:
    """The dynamic-linking facts of an ELF64 little-endian file (empty for a static binary)."""
    if not is_elf(data) or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # vaddr, offset, filesz
    interp = None
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((vaddr, off, filesz))
        elif p_type == PT_INTERP:
            interp = data[off : off + filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dyn = (off, filesz)
    if dyn is None:
        return Dynamic(interp, (), ())
    entries = []
    for pos in range(dyn[0], dyn[0] + dyn[1], 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_addr = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab_addr is None:
        return Dynamic(interp, (), ())
    strtab = next((off + strtab_addr - va for va, off, sz in loads if va <= strtab_addr < va + sz), None)
    if strtab is None:
        raise ValueError("DT_STRTAB is outside every loaded segment")

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start : data.index(b"\0", start)].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    runpath = tuple(p for t, v in entries if t in (DT_RPATH, DT_RUNPATH) for p in string(v).split(":") if p)
    return Dynamic(interp, needed, runpath)


def resolve_in(root: Path, path: str) -> Path | None:
    """Follow symlinks of ``path`` as if ``root`` were ``/``; None if it does not exist there."""
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        current = current / parts.pop(0)
        if current.is_symlink():
            hops += 1
            if hops > 40:
                raise ImageError(f"symlink loop at {path} in {root}")
            target = os.readlink(current)
            rest = [p for p in target.split("/") if p]
            base = root if target.startswith("/") else current.parent
            rel = base.relative_to(root).parts
            parts = [*rel, *rest, *parts]
            current = root
        elif not current.exists():
            return None
    return current


def closure(root: Path, wanted: list[str]) -> dict[str, Path]:
    """Map each wanted path and every library it needs (transitively) to its file inside ``root``."""
    found: dict[str, Path] = {}
    todo = list(wanted)
    while todo:
        guest_path = todo.pop()
        if guest_path in found:
            continue
        real = resolve_in(root, guest_path)
        if real is None or not real.is_file():
            raise ImageError(f"{guest_path} is not in the unpacked packages")
        found[guest_path] = real
        data = real.read_bytes()
        if not is_elf(data):
            continue
        info = dynamic(data)
        if info.interp:
            todo.append(info.interp.lstrip("/"))
        origin = os.path.dirname(guest_path)
        dirs = [d.replace("$ORIGIN", "/" + origin).lstrip("/") for d in info.runpath] + list(LIB_DIRS)
        for soname in info.needed:
            hit = next((f"{d}/{soname}" for d in dirs if resolve_in(root, f"{d}/{soname}") is not None), None)
            if hit is None:
                raise ImageError(f"{guest_path} needs {soname}, which none of the unpacked packages provides")
            todo.append(hit)
    return found
