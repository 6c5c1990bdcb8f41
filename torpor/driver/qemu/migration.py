"""Saving the machine state to a file and loading it back, over QMP, with the best mechanism QEMU offers.

Mechanisms (recorded in the saved state's manifest; a restore uses the one the save used):

``stream``
    A migration stream written into a file descriptor the host agent opened and passed to QEMU (``getfd``): no
    helper process, works on every QEMU.  Zero pages cost a few bytes each.
``mapped-ram``
    QEMU 9.0+: ``file:`` migration with the ``mapped-ram`` and ``multifd`` capabilities.  Each RAM page has a fixed
    offset in the file and several threads write and read it; zero pages are holes, so the (sparse) file occupies
    about the guest's touched memory whatever its size, and loading is parallel.
``shared-ram``
    saveMode instant: the guest RAM lives in a shared memory-backend-file that stays where it is
    (``x-ignore-shared``); the state file holds the device state only.

QEMU's default migration bandwidth cap (128 MiB/s) also applies to a paused VM, so it is lifted before saving.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.driver.qemu.qmp import QMPSession
from torpor.errors import DriverError

log = logging.getLogger(__name__)

STREAM = "stream"
MAPPED_RAM = "mapped-ram"
SHARED_RAM = "shared-ram"
MECHANISMS = (STREAM, MAPPED_RAM, SHARED_RAM)

FD_NAME = "torpor-state"
UNLIMITED = 1 << 62  # bytes per second
POLL = 0.005

Progress = Callable[[int, int], None]


def multifd_channels() -> int:
    """Threads QEMU writes and reads a mapped-ram state with: one per host CPU, between 2 and 8."""
    return max(2, min(8, os.cpu_count() or 2))


async def capabilities(qmp: QMPSession) -> set[str]:
    """The migration capabilities this QEMU knows."""
    return {c["capability"] for c in await qmp.execute("query-migrate-capabilities")}


DESCRIPTIONS = {
    STREAM: "migration stream into a file descriptor (every QEMU)",
    MAPPED_RAM: f"file: migration with mapped-ram and multifd ({multifd_channels()} threads), sparse state file",
    SHARED_RAM: "guest RAM in a shared memory-backend-file, x-ignore-shared; the state holds devices only",
}


def by_save_mode(capability_names: set[str]) -> dict[str, str]:
    """The mechanism each saveMode uses with a QEMU that has these capabilities."""
    return {"copy": choose(capability_names, False, Path("state")), "instant": SHARED_RAM}


def choose(capability_names: set[str], shared_ram: bool, path: Path) -> str:
    """The mechanism for a save: shared-ram for a shared RAM file, else mapped-ram where QEMU has it."""
    if shared_ram:
        return SHARED_RAM
    # The file: URI takes options after a comma; a path with one goes by file descriptor instead.
    if "mapped-ram" in capability_names and "multifd" in capability_names and "," not in str(path):
        return MAPPED_RAM
    return STREAM


async def _prepare(qmp: QMPSession, mechanism: str) -> None:
    """Capabilities and parameters; the saving and the restoring QEMU must agree on them.

    Every capability torpor uses is set, on or off: a QEMU that restored one way (or took a snapshot) may save
    another way later.
    """
    caps = {
        # RAM in a shared memory-backend-file is not copied: it stays in its file.
        "x-ignore-shared": mechanism == SHARED_RAM,
        "mapped-ram": mechanism == MAPPED_RAM,
        "multifd": mechanism == MAPPED_RAM,
    }
    known = await capabilities(qmp)
    if mechanism == MAPPED_RAM:
        await qmp.execute("migrate-set-parameters", {"multifd-channels": multifd_channels()})
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": k, "state": v} for k, v in caps.items() if k in known]},
    )


async def save(qmp: QMPSession, mechanism: str, path: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Pause the VM and write its state to ``path`` (created, mode 0600); return QEMU's final statistics.

    The caller fsyncs the file.
    """
    await qmp.execute("stop")
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    await _prepare(qmp, mechanism)
    if mechanism == MAPPED_RAM:
        path.touch(mode=0o600)  # QEMU keeps an existing file's mode
        await qmp.execute("migrate", {"uri": f"file:{path}"})
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            await qmp.pass_fd(fd, FD_NAME)
        finally:
            os.close(fd)  # QEMU holds its own copy
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


async def load(
    qmp: QMPSession,
    mechanism: str,
    path: Path,
    alive: Callable[[], bool],
    *,
    progress: Progress | None = None,
    while_loading: Callable[[], None] | None = None,
) -> None:
    """Feed a saved state into a QEMU started with ``-incoming defer``; return when it is loaded (VM paused).

    A stream's progress comes from the file offset, which QEMU's copy of the descriptor shares with ours;
    mapped-ram threads read at their own offsets and report none.
    """
    if mechanism not in MECHANISMS:
        raise DriverError(f"unknown save mechanism {mechanism!r}")
    await _prepare(qmp, mechanism)
    fd = -1
    try:
        if mechanism == MAPPED_RAM:
            await qmp.execute("migrate-incoming", {"uri": f"file:{path}"})
        else:
            fd = os.open(path, os.O_RDONLY)
            await qmp.pass_fd(fd, FD_NAME)
            await qmp.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
        if while_loading is not None:
            while_loading()
        total = path.stat().st_size
        # A `cont` sent while QEMU is still "inmigrate" is accepted and ignored: wait until the load has finished.
        while True:
            if not alive():
                raise DriverError("QEMU exited while loading the saved state")
            try:
                status = (await qmp.execute("query-status")).get("status")
                if progress is not None and fd >= 0:
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
    finally:
        if fd >= 0:
            os.close(fd)
