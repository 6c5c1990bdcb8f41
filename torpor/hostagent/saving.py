"""Saving the running VM to ``saved/`` and the boot record a restore needs.

Order matters for crash safety: the state goes to ``state.bin.tmp``, is fsynced and renamed; QEMU quits (which
flushes and closes the disk); the disk is fsynced; only then is the manifest written, atomically.  A save that
fails at any step before QEMU quits resumes the VM so that the caller can shut it down cleanly instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.errors import TorporError
from torpor.store import atomic, filenames, savedstate

if TYPE_CHECKING:
    from torpor.driver.base import Driver, SaveRestore
    from torpor.hostagent.mounts import MountSet
    from torpor.store.records import BootRecord, MachineState, Manifest

log = logging.getLogger(__name__)


class SaveFailed(Exception):
    """The save did not complete; ``vm_alive`` says whether the VM was resumed and can still be shut down."""

    def __init__(self, message: str, vm_alive: bool) -> None:
        super().__init__(message)
        self.vm_alive = vm_alive


async def save(
    inst_dir: Path,
    driver: Driver,
    boot_record: BootRecord,
    mounts: MountSet,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Save the VM into ``saved/``; return the manifest.  Raises :class:`SaveFailed`."""
    t0 = time.monotonic()
    try:
        await mounts.hold()  # between two SFTP packets, or unmounted
    except TorporError as e:
        raise SaveFailed(f"the mounts could not be made ready for the save: {e}", vm_alive=True) from e
    try:
        state, mechanism, stats, digest = await _write_state(inst_dir, driver, progress)
    except SaveFailed as e:
        if e.vm_alive:
            await mounts.release()
        raise
    save_seconds = time.monotonic() - t0
    # From here the VM's memory exists only in the state file (and, in instant mode, the RAM file).
    await driver.quit()
    log.info("QEMU has quit")
    sessions = await mounts.export(final=True)
    disk = inst_dir / filenames.DISK
    await asyncio.to_thread(atomic.fsync_file, disk)
    if driver.ram_file is not None:  # the guest's dirty pages, written back by the kernel
        await asyncio.to_thread(atomic.fsync_file, driver.ram_file)
    log.info("disk flushed")
    try:
        state_sha = await digest.result()
        log.info("state digest computed")
    except OSError as e:
        savedstate.discard(inst_dir)
        raise SaveFailed(
            f"reading the state file back failed after QEMU stopped ({e}); the next start cold boots", False
        ) from e
    machine = driver.machine_record()
    record = state_record(
        inst_dir, machine, boot_record, mechanism=mechanism, stats=stats, state=state, mounts=sessions
    )
    record["state"]["digest"] = state_sha
    record["state"]["identity"] = savedstate.written_identity(state)
    manifest: Manifest = {
        **record,  # type: ignore[typeddict-item]  # a MachineState; format, complete and digest: write_manifest's
        "ramFile": savedstate.file_identity(driver.ram_file) if driver.ram_file is not None else None,
        "disk": savedstate.file_identity(disk),
        "saveSeconds": save_seconds,
    }
    try:
        await asyncio.to_thread(savedstate.write_manifest, inst_dir, manifest)
    except OSError as e:
        # QEMU has quit: the running state is gone, but the disk was flushed and closed; the next start cold boots.
        savedstate.discard(inst_dir)
        raise SaveFailed(
            f"writing the manifest failed after QEMU stopped ({e}); the next start cold boots", False
        ) from e
    return manifest


async def _write_state(
    inst_dir: Path, driver: Driver, progress: Callable[[int, int], None] | None
) -> tuple[Path, str, dict[str, Any], _StateDigest]:
    """The VM's state in ``saved/state.bin``, fsynced and named, its digest under way; the VM paused, not quit.
    A failure resumes the VM (so that it can be shut down cleanly instead) and removes what was written."""
    sdir = _prepare_saved_dir(inst_dir)
    tmp = sdir / (filenames.STATE_FILE + ".tmp")
    digest = _StateDigest(tmp)
    ram = driver.ram_file
    try:
        # Written out while QEMU writes it (and, in instant mode, the guest's dirty RAM once the VM has stopped),
        # so that the fsyncs after find little left to do.
        with atomic.Writeback([tmp] if ram is None else [tmp, ram]):
            mechanism, stats = await driver.save(tmp, progress, written=digest.start)
        await asyncio.to_thread(atomic.fsync_file, tmp)
        digest.settle()
    except Exception as e:
        digest.cancel()
        tmp.unlink(missing_ok=True)
        alive = await _resume(driver)
        raise SaveFailed(f"saving the machine state failed: {e}", alive) from e
    state = sdir / filenames.STATE_FILE
    try:
        tmp.rename(state)
        atomic.fsync_dir(sdir)
    except OSError as e:
        digest.cancel()
        state.unlink(missing_ok=True)
        alive = await _resume(driver)
        raise SaveFailed(f"writing the state file failed: {e}", alive) from e
    return state, mechanism, dict(stats), digest


def _prepare_saved_dir(inst_dir: Path) -> Path:
    sdir = savedstate.saved_dir(inst_dir)
    try:
        savedstate.set_aside(inst_dir)  # an older, interrupted save: keep it for diagnosis, out of the way
        sdir.mkdir(mode=0o700, exist_ok=True)  # may exist empty (a mount point for the state, say)
    except OSError as e:  # a full disk, say: the VM has not been touched and can be shut down instead
        raise SaveFailed(f"preparing {sdir} for the state failed: {e}", vm_alive=True) from e
    return sdir


def state_record(
    inst_dir: Path,
    machine: dict[str, Any],
    boot_record: BootRecord,
    *,
    mechanism: str,
    stats: dict[str, Any],
    state: Path,
    mounts: list[dict[str, Any]],
) -> MachineState:
    """What a restore of ``state`` needs to know: the machine it came from (the driver's ``machine_record()``
    as it was when the state was written) and how it was written (its digest is the caller's to add).  A saved
    state's manifest and a snapshot's record both start from this.
    """
    st = state.stat()
    record: MachineState = {
        "createdAt": time.time(),
        "qemu": machine["qemu"],
        "machine": machine["machine"],
        "mechanism": mechanism,
        "argv": machine["argv"],
        "boot": boot_record,
        "config": boot_record["config"],
        "configDigest": boot_record["configDigest"],
        "cidataSha256": savedstate.sha256_file(inst_dir / filenames.CIDATA),
        "state": {"size": st.st_size, "allocated": st.st_blocks * 512},
        "qemuStats": {k: stats.get(k) for k in ("total-time", "downtime") if k in stats},
        "mounts": mounts,
    }
    if machine.get("firmware"):
        record["firmware"] = machine["firmware"]
    return record


class _StateDigest:
    """The state's digest, computed while the save finishes instead of after it.

    It starts as soon as QEMU reports the state written (:meth:`start`), while QEMU syncs and closes the file,
    the state is renamed, QEMU quits and the disk is flushed; it reads through a descriptor opened then, which
    the rename does not affect.  Once QEMU has closed the file (:meth:`settle`), a file whose size or mtime moved
    since it was read is read again (QEMU does not write after its report: cheap insurance against one that
    would).
    """

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._closed = asyncio.Event()
        self._task: asyncio.Future[str] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(_digest_once_closed(os.open(self._tmp, os.O_RDONLY), self._closed))

    def settle(self) -> None:
        """Call once QEMU has closed the state, before it is renamed."""
        self.start()
        self._closed.set()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def result(self) -> str:
        assert self._task is not None
        return await self._task


async def _digest_once_closed(fd: int, closed: asyncio.Event) -> str:
    """The digest of the file open as ``fd`` (closed here) as it is once ``closed`` is set.  Each reading
    thread gets a descriptor of its own: a cancelled save closes ``fd`` without pulling it from under one."""
    try:
        while True:
            digest, before = await asyncio.to_thread(_digest_of, os.dup(fd))
            await closed.wait()
            now = os.fstat(fd)
            if (before.st_size, before.st_mtime_ns) == (now.st_size, now.st_mtime_ns):
                return digest
            log.warning("QEMU wrote to the state after it reported it written; computing its digest again")
    finally:
        os.close(fd)


def _digest_of(fd: int) -> tuple[str, os.stat_result]:
    """The state's digest through ``fd``, which it closes, and the file's status before it was read."""
    try:
        before = os.fstat(fd)
        return savedstate.fd_digest(fd), before
    finally:
        os.close(fd)


async def _resume(driver: SaveRestore) -> bool:
    try:
        await driver.resume()
    except Exception as e:  # QEMU may be gone (killed mid-save)
        log.warning("could not resume the VM after a failed save: %s", e)
        return False
    return True
