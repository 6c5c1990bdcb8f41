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
from typing import Any

from torpor.driver.qemu.driver import QemuDriver
from torpor.hostagent.saving import fsync_path, state_record
from torpor.store import atomic, filenames, savedstate, snapshots


async def create(
    inst_dir: Path,
    driver: QemuDriver,
    boot_record: dict[str, Any],
    tag: str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Take snapshot ``tag`` of the running VM; return its record."""
    final = snapshots.snapshot_dir(inst_dir, tag)
    work = final.with_name(f".{tag}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    state = work / filenames.STATE_FILE
    ram = work / filenames.MEMORY_FILE
    try:
        t0 = time.monotonic()
        mechanism, stats = await driver.snapshot(tag, state, ram, progress)
        paused = time.monotonic() - t0
        await asyncio.to_thread(fsync_path, state)
        await asyncio.to_thread(shutil.copyfile, inst_dir / filenames.CIDATA, work / filenames.CIDATA)
        digest = await asyncio.to_thread(savedstate.state_digest, state)
        meta = state_record(inst_dir, driver, boot_record, mechanism=mechanism, stats=stats, state=state, digest=digest)
        if ram.exists():
            await asyncio.to_thread(fsync_path, ram)
            meta["ram"] = await asyncio.to_thread(snapshots.ram_record, ram)
        meta.update(tag=tag, memory=True, pausedSeconds=paused, seconds=time.monotonic() - t0)
        snapshots.write_meta(work, meta)
        work.rename(final)
        atomic.fsync_dir(final.parent)
        return meta
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
