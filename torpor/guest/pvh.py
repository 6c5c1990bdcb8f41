"""The uncompressed kernel inside an x86 bzImage, booted directly through its PVH entry point.

A bzImage decompresses its kernel itself, in the guest, before the kernel's first line: under TCG software
emulation that is seconds of every cold boot (docs/design.md has the figures).  QEMU boots an uncompressed ELF
``vmlinux`` with a PVH entry note just as well, with nothing left to decompress, so torpor's built guests boot that
instead.  Only kernels that have the note (CONFIG_PVH) and a payload the standard library can decompress (xz,
gzip) qualify; for any other the bzImage is booted as it is.
"""

from __future__ import annotations

import lzma
import os
import struct
import zlib
from pathlib import Path

from torpor.guest import elf

SUFFIX = ".pvh"  # the extracted kernel, beside its bzImage
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4


def payload(bzimage: bytes) -> bytes | None:
    """The decompressed payload of a bzImage (the ELF vmlinux), or None if it is not one this can read."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    data = bzimage[start : start + length]
    try:
        if data.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        if data.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=31).decompress(data)  # what follows the stream is ignored
    except (lzma.LZMAError, zlib.error):
        return None
    return None


def has_pvh_entry(image: bytes) -> bool:
    """Whether an ELF64 kernel carries the PVH entry note that QEMU boots it by."""
    if not elf.is_elf(image) or image[4] != 2 or image[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", image, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    for i in range(phnum):
        p_type, _flags, off, _vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", image, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", image, pos)
            name = image[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def boot_kernel(bzimage: Path) -> Path:
    """The kernel file to boot for ``bzimage``: its PVH vmlinux (extracted once, beside it), or itself."""
    out = bzimage.with_name(bzimage.name + SUFFIX)
    if out.exists():
        return out
    data = payload(bzimage.read_bytes())
    if data is None or not has_pvh_entry(data):
        return bzimage
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(out)
    return out


def _align4(n: int) -> int:
    return (n + 3) & ~3
