"""QEMU started on a saved state before the host agent has imported asyncio (the early restore path).

The host agent's first module (hostagent/early.py) calls :func:`launch` through the factory: QEMU is started with
the saved boot's command line and ``-incoming defer``, set loading the state over a few synchronous QMP commands,
and, if the state file is as the save left it (no digest to verify first), let run as soon as the load is done.
The driver the agent makes later adopts the process (driver.Launched).

Only light modules may be imported here: the standard library's basics, torpor's store and QEMU facts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torpor import subp
from torpor.driver.qemu import host, mechanisms
from torpor.driver.qemu.qmpsync import SyncQMP
from torpor.store import filenames, savedstate

QMP_TIMEOUT = 30.0
POLL = 0.005


class EarlyLaunch(NamedTuple):
    """A QEMU loading (or, ``running``, having loaded and run) a saved state; the driver adopts it."""

    qemu: host.Qemu
    popen: subprocess.Popen[bytes]
    state_fd: int  # -1 for mapped-ram (QEMU opened the file itself) and multifd (the relay sends it)
    position: mechanisms.Position | None  # how far the load is (mapped-ram: unknown)
    running: bool
    # The mounts' channels, connected before the VM ran: a guest whose sshfs found its channel unconnected
    # would read an end of file and lose the mount.  The host agent's relays adopt them.
    channels: tuple[socket.socket, ...] = ()


def launch(
    inst_dir: Path,
    saved: savedstate.Saved,
    qemu: host.Qemu,
    *,
    meanwhile: Callable[[], None],
    progress: Callable[[int, int], None],
    stop_asked: Callable[[], bool],
) -> EarlyLaunch:
    """Start QEMU loading ``saved``; ``meanwhile`` runs while QEMU starts up.  The VM is let run here only if the
    state file is untouched since the save and no stop was asked for (``stop_asked``) before it ran."""
    popen = subp.spawn_daemon([*saved.manifest["argv"], "-incoming", "defer"])
    fd = -1
    channels: list[socket.socket] = []
    try:
        meanwhile()
        qmp = SyncQMP(inst_dir / filenames.QMP_SOCK, QMP_TIMEOUT, alive=lambda: popen.poll() is None)
        try:
            fd, position = _start_loading(qmp, inst_dir, saved)
            config = saved.manifest["config"]
            sshfs_mounts = len(config["mounts"]) if config["mountType"] == "reverse-sshfs" else 0
            for i in range(sshfs_mounts):  # QEMU made their sockets before QMP answered
                channels.append(socket.socket(socket.AF_UNIX))
                channels[-1].connect(str(inst_dir / filenames.mount_sock(i)))
            running = savedstate.state_unchanged(saved) and _run_when_loaded(
                qmp, popen, position, progress=progress, stop_asked=stop_asked
            )
        finally:
            qmp.close()
    except BaseException:
        popen.kill()
        popen.wait()
        if fd >= 0:
            os.close(fd)
        for c in channels:
            c.close()
        raise
    return EarlyLaunch(qemu, popen, fd, position, running, tuple(channels))


def _start_loading(qmp: SyncQMP, inst_dir: Path, saved: savedstate.Saved) -> tuple[int, mechanisms.Position | None]:
    """migration.start_incoming, synchronously: the descriptor QEMU reads from (or -1) and the load's position."""
    known = {c["capability"] for c in qmp.execute("query-migrate-capabilities")}
    for command, args in mechanisms.setup_commands(saved.mechanism, known):
        qmp.execute(command, args)
    fd = -1
    position: mechanisms.Position | None = None
    if saved.mechanism in (mechanisms.STREAM, mechanisms.SHARED_RAM):
        fd = os.open(saved.state, os.O_RDONLY)
        qmp.execute("getfd", {"fdname": mechanisms.FD_NAME}, fd=fd)
        position = mechanisms.stream_position(fd, saved.manifest["state"]["size"])
    relay_socket = inst_dir / filenames.MIGRATION_SOCK
    qmp.execute("migrate-incoming", {"uri": mechanisms.incoming_uri(saved.mechanism, saved.state, relay_socket)})
    if saved.mechanism == mechanisms.MULTIFD:
        from torpor.driver.qemu import relay  # not on the path of the other mechanisms

        position = relay.Feed(relay_socket, saved.state).progress
    return fd, position


def _run_when_loaded(
    qmp: SyncQMP,
    popen: subprocess.Popen[bytes],
    position: mechanisms.Position | None,
    *,
    progress: Callable[[int, int], None],
    stop_asked: Callable[[], bool],
) -> bool:
    """Wait until QEMU has loaded the state (mechanisms.load_outcome), then let the VM run.  False, with the VM
    not run, if the load fails, QEMU exits or a stop is asked for: the agent proper then goes on (and reports)
    as if it had waited itself.  ``position`` (None for mapped-ram) feeds ``progress``."""
    while popen.poll() is None and not stop_asked():
        status = str(qmp.execute("query-status").get("status"))
        info = qmp.execute("query-migrate") if status != "inmigrate" else {}
        outcome = mechanisms.load_outcome(status, info.get("status"))
        if outcome == mechanisms.FAILED:
            return False
        if outcome == mechanisms.LOADED:
            qmp.execute("cont")
            return True
        if position is not None:
            progress(*position())
        time.sleep(POLL)
    return False
