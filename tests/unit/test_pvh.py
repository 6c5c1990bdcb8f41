"""The PVH kernel inside a bzImage: found, decompressed once, and booted only if it has the PVH entry note."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from torpor.guest import pvh


def elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 little-endian file with one PT_NOTE segment holding ``notes`` (name, type)."""
    body = b""
    for name, kind in notes:
        n = name + b"\0"
        desc = b"\0" * 8
        body += struct.pack("<III", len(n), len(desc), kind) + n.ljust((len(n) + 3) & ~3, b"\0") + desc
    phoff = 64
    notes_off = phoff + 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", pvh.PT_NOTE, 4, notes_off, 0, 0, len(body), len(body), 4)
    return header + phdr + body


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A bzImage-shaped file: boot sector and setup (with the header fields torpor reads), then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    pad = b"decompressor code"
    struct.pack_into("<II", setup, 0x248, len(pad), len(payload))
    return bytes(setup) + pad + payload + b"trailer"


PVH_KERNEL = elf_with_notes([(b"Linux", 1), (b"Xen", 6), (b"Xen", pvh.XEN_ELFNOTE_PHYS32_ENTRY)])


@pytest.mark.parametrize("compress", [lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), gzip.compress])
def test_a_pvh_kernel_is_extracted_once_and_booted(tmp_path: Path, compress: object) -> None:
    assert callable(compress)
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(compress(PVH_KERNEL)))
    booted = pvh.boot_kernel(image)
    assert booted == tmp_path / "vmlinuz.pvh" and booted.read_bytes() == PVH_KERNEL
    stamp = booted.stat().st_mtime_ns
    assert pvh.boot_kernel(image) == booted and booted.stat().st_mtime_ns == stamp  # not extracted again


def test_a_kernel_without_the_pvh_note_is_booted_as_it_is(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(lzma.compress(elf_with_notes([(b"Xen", 6), (b"Linux", 18)]))))
    assert pvh.boot_kernel(image) == image
    assert not (tmp_path / "vmlinuz.pvh").exists()


@pytest.mark.parametrize(
    "data",
    [
        b"not a kernel at all" * 100,
        bzimage(b"\x28\xb5\x2f\xfd zstd, which the standard library cannot read"),
        bzimage(b"\xfd7zXZ\x00 but damaged"),
    ],
)
def test_anything_else_is_booted_as_it_is(tmp_path: Path, data: bytes) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(data)
    assert pvh.boot_kernel(image) == image
