"""A saved machine state on disk and the checks that decide whether it may be restored.

Layout: ``saved/state.bin`` (the machine state as QEMU saved it: see driver.qemu.migration) and
``saved/manifest.json``.  The manifest is written last, atomically, and carries its own digest: a state directory
without a manifest, or with one that does not verify, is an interrupted or damaged save and is never restored.
A state that fails its checks or that QEMU rejects is moved aside (``saved.failed-TIME``) for diagnosis, never
deleted silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import xxhash

from torpor.store import atomic, filenames, records, sealed

if TYPE_CHECKING:
    from torpor.store.records import FileIdentity, Manifest, WrittenIdentity

FORMAT = 1


def saved_dir(inst_dir: Path) -> Path:
    return inst_dir / filenames.SAVED_DIR


def present(inst_dir: Path) -> bool:
    """Whether the instance has a saved state, complete or not; an empty directory (a mount point) is none."""
    d = saved_dir(inst_dir)
    return d.exists() and any(d.iterdir())


def file_identity(path: Path) -> FileIdentity:
    """What changes when a file is written: size, modification time, inode."""
    st = path.stat()
    return {"size": st.st_size, "mtimeNs": st.st_mtime_ns, "inode": st.st_ino}


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return "sha256:" + h.hexdigest()


def written_identity(path: Path) -> WrittenIdentity:
    """:func:`file_identity` plus the inode's change time, which every write, truncation, link or attribute
    change moves and which no one can set back (short of changing the clock): unchanged, the file is as it was."""
    st = path.stat()
    return {**file_identity(path), "ctimeNs": st.st_ctime_ns}


def state_unchanged(saved: Saved) -> bool:
    """Whether the state file is untouched since it was written (its digest need not be recomputed)."""
    recorded = saved.manifest["state"].get("identity")
    try:
        return recorded is not None and written_identity(saved.state) == recorded
    except OSError:
        return False


BLOCK = 1 << 20

# How a block of a state file is hashed, by the name a digest starts with.  New digests hash blocks with XXH3
# (64 bits): they are there to catch accidental damage (a torn or truncated copy, flipped bits), which leaves a
# 1 MiB block's hash unchanged with odds of 1 in 2^64; they are no defence against deliberate edits, but whoever
# can write the state file can rewrite its manifest too.  A save waits for the digest; measured here, per core,
# on blocks in memory: XXH3 tens of GB/s, zlib.crc32 2-5 GB/s, sha256 1.2 GB/s.  Digests written by earlier
# versions (blocks-sha256) still verify.
BLOCK_HASHES: dict[str, Callable[[memoryview], bytes]] = {
    "blocks-xxh3": xxhash.xxh3_64_digest,
    "blocks-sha256": lambda data: hashlib.sha256(data).digest(),
}
DIGEST = "blocks-xxh3"


def state_digest(path: Path, algorithm: str = DIGEST) -> str:
    """A content digest of a state file that does not read its holes.

    A mapped-ram state is a sparse file of the guest's RAM size: it is hashed in 1 MiB blocks (sha256 of the
    block hashes), and blocks that lie wholly in a hole get the all-zero block's hash without being read.
    The result depends on the contents only, not on which zero ranges happen to be holes.
    """
    with path.open("rb", buffering=0) as f:
        return fd_digest(f.fileno(), algorithm)


def digest_threads() -> int:
    """Threads a digest reads with: two where there are two cores (see :func:`fd_digest`)."""
    return min(2, os.cpu_count() or 1)


def fd_digest(fd: int, algorithm: str = DIGEST, threads: int | None = None) -> str:
    """:func:`state_digest` of the file open as ``fd`` (which may be renamed meanwhile).

    The blocks are read through shared read-only mappings of the page cache, without copying them (the file
    must not shrink meanwhile: that would end the process with SIGBUS; state files are written once), by
    ``threads`` threads (:func:`digest_threads`), each hashing a contiguous share of the data blocks through a
    mapping of its own.  Measured here on a 4 GiB guest's 394 MiB state in the page cache: 0.059-0.075 s with
    one thread, 0.032-0.036 s with two (three: no better); in ``stop --save`` of that guest (four interleaved
    pairs) the digest then ended 20-25 ms after QEMU had quit instead of 48-61 ms, and the stop took 0.41-0.46 s
    instead of 0.44-0.47 s.
    """
    block_hash = BLOCK_HASHES[algorithm]
    zero_block = block_hash(memoryview(bytes(BLOCK)))
    size = os.fstat(fd).st_size
    if size == 0:
        return f"{algorithm}:{hashlib.sha256().hexdigest()}"
    nblocks = -(-size // BLOCK)
    digests = [zero_block] * nblocks  # a block wholly in a hole is not read
    to_read = sorted(set(_data_blocks(fd, size)) | ({nblocks - 1} if size % BLOCK else set()))
    per_thread = -(-len(to_read) // (threads or digest_threads())) or 1

    def hash_share(share: list[int]) -> None:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                for b in share:
                    with view[b * BLOCK : (b + 1) * BLOCK] as block:  # released at once: the mapping closes after
                        digests[b] = block_hash(block)
            finally:
                view.release()

    from concurrent.futures import ThreadPoolExecutor  # not on the early restore path, which never digests

    shares = [to_read[i : i + per_thread] for i in range(0, len(to_read), per_thread)]
    with ThreadPoolExecutor(max(1, len(shares)), thread_name_prefix="digest") as pool:
        for _ in pool.map(hash_share, shares):  # raises what a share raised
            pass
    return f"{algorithm}:{hashlib.sha256(b''.join(digests)).hexdigest()}"


def digest_matches(path: Path, expected: object) -> bool:
    """Whether ``path`` has the digest ``expected`` (computed the way that digest names)."""
    algorithm = expected.partition(":")[0] if isinstance(expected, str) else ""
    return algorithm in BLOCK_HASHES and state_digest(path, algorithm) == expected


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ranges ``(start, end)`` of ``fd`` that hold data, between its holes (SEEK_DATA / SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole up to the end
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, hole
        offset = hole


def _data_blocks(fd: int, size: int) -> Iterator[int]:
    """The 1 MiB blocks of ``fd`` that hold some data, in order."""
    for start, end in _data_extents(fd, size):
        yield from range(start // BLOCK, -(-end // BLOCK))


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` extent by extent (``copy_file_range``): holes stay holes, a sparse RAM file of a
    few GiB with a few hundred MiB in use copies in a fraction of a second."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data_extents(fin.fileno(), size):
            done = start
            while done < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - done, done, done)
                if n == 0:
                    raise OSError(f"{src} ended early while copying it")
                done += n
        fout.truncate(size)


MANIFEST_DIGEST = "manifestDigest"


def write_manifest(inst_dir: Path, manifest: Mapping[str, object]) -> None:
    """Mark the save complete: the manifest (a Manifest but for format, complete and its digest, which this adds)
    goes in last, atomically."""
    sealed.write(
        saved_dir(inst_dir) / filenames.MANIFEST, {**manifest, "format": FORMAT, "complete": True}, MANIFEST_DIGEST
    )


class Saved(NamedTuple):
    """A complete saved state whose manifest verifies (the state file itself is checked by :func:`problems`)."""

    dir: Path
    manifest: Manifest

    @property
    def state(self) -> Path:
        return self.dir / filenames.STATE_FILE

    @property
    def created(self) -> float:
        return float(self.manifest["createdAt"])

    @property
    def size(self) -> int:
        """Bytes the state occupies on disk (a mapped-ram state is sparse)."""
        return int(self.manifest["state"]["allocated"])

    @property
    def mechanism(self) -> str:
        return str(self.manifest["mechanism"])


class Unusable(Exception):
    """A saved state exists but must not be restored; the message says why."""


def load(inst_dir: Path) -> Saved | None:
    """The saved state, None if there is none; :class:`Unusable` if one exists but is incomplete or damaged."""
    if not present(inst_dir):
        return None
    d = saved_dir(inst_dir)
    path = d / filenames.MANIFEST
    if not path.exists():
        raise Unusable("a save was interrupted before it completed (no manifest)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Unusable(f"the saved state's manifest is unreadable: {e}") from None
    if not sealed.verifies(manifest, MANIFEST_DIGEST):
        raise Unusable("the saved state's manifest is damaged (its digest does not match)")
    lacking = records.missing(manifest, (*records.MACHINE_STATE, "disk", "ramFile"))
    lacking += [f"boot.{k}" for k in records.missing(manifest.get("boot"), records.BOOT_RECORD)]
    if manifest.get("format") != FORMAT or not manifest.get("complete") or lacking:
        raise Unusable(
            "the saved state's manifest is not a complete save of this torpor version"
            + (f" (it lacks {', '.join(lacking)})" if lacking else "")
        )
    return Saved(d, manifest)


def problems(saved: Saved, inst_dir: Path, qemu_version: str, verify_state: bool = True) -> list[str]:
    """Why ``saved`` cannot be restored now (empty if it can)."""
    m = saved.manifest
    out = []
    if m["qemu"]["version"] != qemu_version:
        out.append(f"QEMU changed since the save ({m['qemu']['version']} -> {qemu_version})")
    disk = inst_dir / filenames.DISK
    if not disk.exists() or file_identity(disk) != m["disk"]:
        out.append("the disk changed since the save (restoring would corrupt it)")
    if m["ramFile"] is not None:
        ram = inst_dir / filenames.MEMORY_FILE
        if not ram.exists() or file_identity(ram) != m["ramFile"]:
            out.append("the guest RAM file changed since the save (it and the state are a pair)")
    cidata = inst_dir / filenames.CIDATA
    if not cidata.exists() or sha256_file(cidata) != m["cidataSha256"]:
        out.append("the cidata seed the VM was booted with changed")
    state = saved.state
    expected = m["state"]
    if not state.exists():
        out.append("the state file is missing")
    elif state.stat().st_size != expected["size"]:
        out.append(f"the state file is {state.stat().st_size} bytes, the save wrote {expected['size']}")
    elif verify_state and not digest_matches(state, expected.get("digest")):
        out.append("the state file's contents changed since the save (checksum mismatch)")
    return out


@contextlib.contextmanager
def disk_file_edit(inst_dir: Path) -> Iterator[None]:
    """Around an edit of the disk file that leaves what the guest sees unchanged (adding or removing an internal
    snapshot): a saved state that matched the disk before still matches it after, so its manifest follows."""
    disk = inst_dir / filenames.DISK
    try:
        saved = load(inst_dir)
    except Unusable:
        saved = None
    matched = saved is not None and disk.exists() and file_identity(disk) == saved.manifest["disk"]
    yield
    if saved is not None and matched:
        write_manifest(inst_dir, {**saved.manifest, "disk": file_identity(disk)})


def set_aside(inst_dir: Path) -> Path | None:
    """Move the saved state out of the way of restores, keeping it for diagnosis; return where it went."""
    if not present(inst_dir):
        return None
    d = saved_dir(inst_dir)
    dest = inst_dir / f"{filenames.SAVED_ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.rename(dest)
    atomic.fsync_dir(inst_dir)
    return dest


def discard(inst_dir: Path) -> None:
    """Delete the saved state (its directory stays if it is a mount point)."""
    d = saved_dir(inst_dir)
    if not d.exists():
        return
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    with contextlib.suppress(OSError):
        d.rmdir()
    atomic.fsync_dir(inst_dir)


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Field paths whose values differ between two config dumps."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, path)
        elif a != b:
            out.append(path)
    return out
