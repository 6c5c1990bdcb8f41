"""Snapshots of the running VM, taken by the host agent (which owns QEMU): disk, RAM and devices together.

The VM pauses for the disk's internal snapshot and the RAM copy only; the state file is fsynced, the seed copied
and the digest computed while the guest runs again.  The snapshot is assembled in a hidden directory and renamed
into place once its record is written, so an interrupted snapshot never looks complete.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torpor.hostagent.saving import state_record
from torpor.store import atomic, filenames, savedstate, snapshots

if TYPE_CHECKING:
    from torpor.driver.base import Driver
    from torpor.hostagent.mounts import MountSet
    from torpor.store.records import BootRecord, MemorySnapshotRecord


async def create(
    inst_dir: Path,
    driver: Driver,
    boot_record: BootRecord,
    tag: str,
    mounts: MountSet,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> MemorySnapshotRecord:
    """Take snapshot ``tag`` of the running VM; return its record."""
    final = snapshots.snapshot_dir(inst_dir, tag)
    work = final.with_name(f".{tag}.tmp-{os.getpid()}")
    await asyncio.to_thread(_fresh_dir, work)
    state = work / filenames.STATE_FILE
    ram = work / filenames.MEMORY_FILE
    try:
        t0 = time.monotonic()
        sessions: list[dict[str, Any]] = []
        machine: dict[str, Any] = {}

        async def while_paused() -> None:  # the mounts' sessions and the machine as the paused VM has them
            sessions.extend(await mounts.export(final=False))
            machine.update(driver.machine_record())  # (its devices can change once mounts are released)

        await mounts.hold(stop_processes=False)
        try:
            mechanism, stats = await driver.snapshot(tag, state, ram, progress, while_paused=while_paused)
        finally:
            await mounts.release()
        paused = time.monotonic() - t0
        # The guest runs again: the rest is file work, done off the event loop.
        record = state_record(
            inst_dir, machine, boot_record, mechanism=mechanism, stats=stats, state=state, mounts=sessions
        )
        meta = cast("MemorySnapshotRecord", {**record, "tag": tag, "memory": True, "pausedSeconds": paused})
        await asyncio.to_thread(_complete, inst_dir, work, final, meta)
        meta["seconds"] = time.monotonic() - t0
        return meta
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _fresh_dir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)


def _complete(inst_dir: Path, work: Path, final: Path, meta: MemorySnapshotRecord) -> None:
    """Flush and digest what QEMU wrote, add the boot's seed, write the record last and put the snapshot in place."""
    state = work / filenames.STATE_FILE
    atomic.fsync_file(state)
    shutil.copyfile(inst_dir / filenames.CIDATA, work / filenames.CIDATA)
    meta["state"]["digest"] = savedstate.state_digest(state)
    ram = work / filenames.MEMORY_FILE
    if ram.exists():
        atomic.fsync_file(ram)
        meta["ram"] = snapshots.ram_record(ram)
    snapshots.write_meta(work, meta)
    work.rename(final)
    atomic.fsync_dir(final.parent)
