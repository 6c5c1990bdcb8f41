"""Saving the machine state to a file and loading it back, over QMP.

The state is a migration stream written into a file descriptor that the host agent opened and passed to QEMU
(``getfd``): no helper process, and the caller owns the file (fsync, rename).  QEMU's default migration bandwidth
cap (128 MiB/s) also applies to a paused VM, so it is lifted before saving.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from torpor.driver.qemu.qmp import QMPSession
from torpor.errors import DriverError

log = logging.getLogger(__name__)

FD_NAME = "torpor-state"
UNLIMITED = 1 << 62  # bytes per second
POLL = 0.005

Progress = Callable[[int, int], None]


async def _ignore_shared(qmp: QMPSession) -> None:
    # RAM in a shared memory-backend-file is not copied into the stream: it stays in its file.
    await qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})


async def save_to_fd(
    qmp: QMPSession, fd: int, progress: Progress | None = None, ignore_shared: bool = False
) -> dict[str, Any]:
    """Pause the VM and write its state into ``fd``; return QEMU's final migration statistics."""
    await qmp.execute("stop")
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    if ignore_shared:
        await _ignore_shared(qmp)
    await qmp.pass_fd(fd, FD_NAME)
    await qmp.execute("migrate", {"uri": f"fd:{FD_NAME}"})
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return dict(info)
        if status in ("failed", "cancelled"):
            raise DriverError(f"QEMU could not save the machine state: {info.get('error-desc', status)}")
        ram = info.get("ram") or {}
        if progress is not None and ram:
            progress(int(ram.get("transferred", 0)), int(ram.get("total", 0)))
        await asyncio.sleep(POLL)


async def load_from_fd(
    qmp: QMPSession,
    fd: int,
    alive: Callable[[], bool],
    *,
    ignore_shared: bool = False,
    progress: Progress | None = None,
    while_loading: Callable[[], None] | None = None,
) -> None:
    """Feed a saved state into a QEMU started with ``-incoming defer``; return when it is loaded (VM paused).

    Progress comes from the file offset, which QEMU's copy of ``fd`` shares with ours.
    """
    total = os.fstat(fd).st_size
    if ignore_shared:
        await _ignore_shared(qmp)
    await qmp.pass_fd(fd, FD_NAME)
    await qmp.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
    if while_loading is not None:
        while_loading()
    # A `cont` sent while QEMU is still "inmigrate" is accepted and ignored: wait until the load has finished.
    while True:
        if not alive():
            raise DriverError("QEMU exited while loading the saved state")
        try:
            status = (await qmp.execute("query-status")).get("status")
            if progress is not None:
                progress(os.lseek(fd, 0, os.SEEK_CUR), total)
            if status != "inmigrate":
                info = await qmp.execute("query-migrate")
                if info.get("status") == "failed":
                    raise DriverError(f"QEMU rejected the saved state: {info.get('error-desc', 'failed')}")
                return
        except DriverError:
            if not alive():
                raise DriverError("QEMU exited while loading the saved state") from None
            raise
        await asyncio.sleep(POLL)
