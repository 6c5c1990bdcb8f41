"""Saving the machine state to a file and loading it back over QMP (the mechanisms: see mechanisms.py).

QEMU's default migration bandwidth cap (128 MiB/s) also applies to a paused VM, so it is lifted before saving.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.driver.qemu import mechanisms, relay
from torpor.driver.qemu.mechanisms import FD_NAME, MAPPED_RAM, MULTIFD
from torpor.driver.qemu.qmp import QMPSession
from torpor.errors import DriverError

log = logging.getLogger(__name__)

UNLIMITED = 1 << 62  # bytes per second
POLL = 0.005

Progress = Callable[[int, int], None]
Position = mechanisms.Position


async def capabilities(qmp: QMPSession) -> set[str]:
    """The migration capabilities this QEMU knows."""
    return {c["capability"] for c in await qmp.execute("query-migrate-capabilities")}


async def _prepare(qmp: QMPSession, mechanism: str, known: set[str]) -> None:
    for command, args in mechanisms.setup_commands(mechanism, known):
        await qmp.execute(command, args)


async def save(
    qmp: QMPSession,
    mechanism: str,
    path: Path,
    known: set[str],
    progress: Progress | None = None,
    *,
    relay_socket: Path,
    written: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Pause the VM and write its state to ``path`` (created, mode 0600); return QEMU's final statistics.

    ``known`` are the QEMU's migration capabilities (:func:`capabilities`); the caller fsyncs the file.
    ``relay_socket``: where the multifd mechanism's relay listens for QEMU's channels.
    ``written`` is called once, on success, as soon as QEMU has written the whole state: its MIGRATION event
    "completed" comes before QEMU has closed the file, which query-migrate waits for.  (QEMU 9+ fdatasyncs a
    file: channel as it closes it, in its main loop: saving a 326 MiB state here, the event came 0.16 s after
    the ``stop`` and query-migrate's "completed" 0.32 s after it.)
    """
    called = False

    def once() -> None:
        nonlocal called
        if written is not None and not called:
            called = True
            written()

    # Through the relay the state is written only once the relay has it all (in _migrate), not at the event.
    watcher = asyncio.ensure_future(_on_completed(qmp, once)) if mechanism != MULTIFD else None
    try:
        await asyncio.sleep(0)  # listening before the migration starts
        info = await _migrate(qmp, mechanism, path, known, progress, relay_socket=relay_socket)
    finally:
        if watcher is not None:
            watcher.cancel()
    once()  # no event seen (the capability unknown, say)
    return info


async def _on_completed(qmp: QMPSession, callback: Callable[[], None]) -> None:
    async for event in qmp.events("MIGRATION"):
        if event.get("data", {}).get("status") == "completed":
            callback()
            return


async def _migrate(
    qmp: QMPSession, mechanism: str, path: Path, known: set[str], progress: Progress | None, *, relay_socket: Path
) -> dict[str, Any]:
    await qmp.execute("stop")
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    await _prepare(qmp, mechanism, known)
    if mechanism == MULTIFD:
        ram = int((await qmp.execute("query-memory-size-summary"))["base-memory"])
        # Off the event loop: it creates the state file and binds the socket.
        recorder = await asyncio.to_thread(relay.Recorder, relay_socket, path, mechanisms.multifd_channels(), ram)
        try:
            await qmp.execute("migrate", {"uri": f"unix:{relay_socket}"})
            info = await _until_completed(qmp, progress)
        except BaseException:
            await asyncio.to_thread(recorder.abort)
            raise
        await asyncio.to_thread(recorder.finish)
        return info
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
    return await _until_completed(qmp, progress)


async def _until_completed(qmp: QMPSession, progress: Progress | None) -> dict[str, Any]:
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            # The run state stays finish-migrate until QEMU's main loop has finalized the migration; a `cont` sent
            # before then fails ("Migration is not finalized yet": seen once, a snapshot of a 4 GiB guest, 7.2).
            while (await qmp.execute("query-status")).get("status") == "finish-migrate":
                await asyncio.sleep(POLL)
            return dict(info)
        if status in ("failed", "cancelled"):
            raise DriverError(f"QEMU could not save the machine state: {info.get('error-desc', status)}")
        ram = info.get("ram") or {}
        if progress is not None and ram:
            progress(int(ram.get("transferred", 0)), int(ram.get("total", 0)))
        await asyncio.sleep(POLL)


async def start_incoming(
    qmp: QMPSession, mechanism: str, path: Path, relay_socket: Path
) -> tuple[int, Position | None]:
    """Have a QEMU started with ``-incoming defer`` begin loading ``path``.  Returns the state's descriptor that
    QEMU shares, to close once loaded (-1 for mapped-ram, which QEMU opens itself, and multifd, which the relay
    sends from its own threads), and how far the load is, where anything tells (mapped-ram: nothing).  The host
    agent's early path does the same before asyncio exists (hostagent/early.py)."""
    if mechanism not in mechanisms.ALL:
        raise DriverError(f"unknown save mechanism {mechanism!r}")
    await _prepare(qmp, mechanism, await capabilities(qmp))
    fd = -1 if mechanism in (MAPPED_RAM, MULTIFD) else os.open(path, os.O_RDONLY)
    try:
        if fd >= 0:
            await qmp.pass_fd(fd, FD_NAME)
        await qmp.execute("migrate-incoming", {"uri": mechanisms.incoming_uri(mechanism, path, relay_socket)})
        if mechanism == MULTIFD:
            return fd, (await asyncio.to_thread(relay.Feed, relay_socket, path)).progress
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd, None if fd < 0 else mechanisms.stream_position(fd, path.stat().st_size)


async def wait_loaded(
    qmp: QMPSession, position: Position | None, alive: Callable[[], bool], progress: Progress | None = None
) -> None:
    """Return once QEMU has loaded the state (the VM is paused); raise if it failed.  ``position`` (see
    :func:`start_incoming`) feeds ``progress``."""
    while True:
        if not alive():
            raise DriverError("QEMU exited while loading the saved state")
        try:
            status = str((await qmp.execute("query-status")).get("status"))
            if progress is not None and position is not None:
                progress(*position())
            info = await qmp.execute("query-migrate") if status != "inmigrate" else {}
            outcome = mechanisms.load_outcome(status, info.get("status"))
            if outcome == mechanisms.FAILED:
                raise DriverError(f"QEMU rejected the saved state: {info.get('error-desc', 'failed')}")
            if outcome == mechanisms.LOADED:
                return
        except DriverError:
            if not alive():
                raise DriverError("QEMU exited while loading the saved state") from None
            raise
        await asyncio.sleep(POLL)
