"""The host agent's first steps, taken before its heavy imports (asyncio, qemu.qmp, pydantic, the guest code).

A restore is only as quick as QEMU gets going.  So the agent, once it holds its pid lock, checks the saved state
(the cheap checks), has the driver factory start QEMU loading it, and, if the state file is as the save left it
(no digest to verify), the VM runs once loaded and the SSH master starts at once; the rest of the agent is
imported while the guest answers SSH.  (Waiting for the load in the agent proper, its imports and start-up kept 2
cores busy beside QEMU's load: the VM ran 0.15 s later.)  A state to verify, or anything unexpected, leaves the
decision to the agent proper, which repeats the checks, reports, and cold boots if it must.  SIGINT and SIGTERM are
noted here and handed to the agent proper.

Only light modules may be imported here (the standard library's basics and torpor's store, the driver factory).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from torpor.driver.qemu import factory
from torpor.errors import TorporError
from torpor.guest import ssh
from torpor.hostagent import events
from torpor.store import filenames, savedstate
from torpor.store.instance import clear_runtime_files, home

log = logging.getLogger(__name__)

OWN_PID_FILE = frozenset({filenames.HA_PID})  # removed last, while its lock is still held


class AlreadyRunning(TorporError):
    pass


class EarlyRestore(NamedTuple):
    """A saved state the driver factory started QEMU on (``launch``: what the driver adopts)."""

    saved: savedstate.Saved
    launch: factory.EarlyLaunch
    ssh_master: subprocess.Popen[bytes] | None = None  # started as the VM ran

    @property
    def running(self) -> bool:
        """The load finished here and the VM runs."""
        return self.launch.running


class Early(NamedTuple):
    pid_fd: int  # the locked ha.pid
    out: events.EventWriter
    restore: EarlyRestore | None
    signals: list[int]  # SIGINT/SIGTERM received before the agent proper handles them


def begin(name: str, inst_dir: Path) -> Early:
    """Lock, announce, and start QEMU on the saved state if there is a usable one.  Raises AlreadyRunning."""
    os.umask(0o077)  # QEMU's sockets and logs are for this user only
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    out = events.EventWriter(sys.stdout)
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda received, _frame: signals.append(received))
    pid_fd = _lock_pid(inst_dir, name)
    # Run directly (by systemd) after a crash, stale sockets of the last run may remain: ours now.
    clear_runtime_files(inst_dir, keep=OWN_PID_FILE)
    out.emit(events.STARTING, f"starting instance {name}")
    restore = None
    try:
        restore = _launch_restore(name, inst_dir, out, signals)
    except Exception as e:  # the agent proper tries again the regular way and reports
        log.warning("early restore not started: %s", e)
    return Early(pid_fd, out, restore, signals)


def _lock_pid(inst_dir: Path, name: str) -> int:
    fd = os.open(inst_dir / filenames.HA_PID, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"instance {name!r} already has a running host agent") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return fd


def _launch_restore(name: str, inst_dir: Path, out: events.EventWriter, signals: list[int]) -> EarlyRestore | None:
    try:
        saved = savedstate.load(inst_dir)
    except savedstate.Unusable:
        return None
    if saved is None:
        return None

    def meanwhile() -> None:  # while QEMU starts up
        out.emit(events.BOOTING, restoring_message(saved), restoring=True)
        boot = saved.manifest["boot"]
        key, _ = ssh.ensure_keypair(home())
        ssh.write_config(inst_dir, name, boot["sshPort"], boot["user"], key)

    launch = factory.early_restore(
        inst_dir,
        saved,
        meanwhile=meanwhile,
        progress=events.ProgressEmitter(out, "restoring"),
        stop_asked=lambda: bool(signals),
    )
    if launch is None or not launch.running:
        return None if launch is None else EarlyRestore(saved, launch)
    log.info("the saved state is loaded and the VM runs; connecting SSH")
    try:
        master = ssh.spawn_master(inst_dir, name)
    except OSError as e:  # the agent proper starts one and reports if that fails too
        log.warning("starting the SSH master: %s", e)
        master = None
    return EarlyRestore(saved, launch, master)


def restoring_message(saved: savedstate.Saved) -> str:
    return f"restoring the saved state ({saved.size / 2**20:.0f} MiB, saved {time.time() - saved.created:.0f} s ago)"
