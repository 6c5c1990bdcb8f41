"""The host agent's first steps, taken before its heavy imports (asyncio, qemu.qmp, pydantic, the guest code).

A restore is only as quick as QEMU gets going.  So the agent, once it holds its pid lock, checks the saved state
(the cheap checks; the digest is verified while QEMU loads), starts QEMU with the saved boot's command line and
``-incoming defer``, and sets it loading the state over a few synchronous QMP commands.  Only then does it import
the rest of itself, while QEMU reads the state.  Anything unexpected here leaves the decision to the agent
proper, which repeats the checks, reports, and cold boots if it must.

Only light modules may be imported here (the standard library's basics and torpor's store and QEMU facts).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from torpor import subp
from torpor.driver.qemu import host, mechanisms
from torpor.driver.qemu.qmpsync import SyncQMP
from torpor.errors import TorporError
from torpor.hostagent import events
from torpor.store import filenames, savedstate
from torpor.store.cache import cache_root
from torpor.store.instance import clear_runtime_files

log = logging.getLogger(__name__)

OWN_PID_FILE = frozenset({filenames.HA_PID})  # removed last, while its lock is still held
QMP_TIMEOUT = 30.0


class AlreadyRunning(TorporError):
    pass


@dataclass
class EarlyRestore:
    """QEMU started and loading ``saved`` (the driver adopts the process and closes ``state_fd``)."""

    saved: savedstate.Saved
    qemu: host.Qemu
    popen: subprocess.Popen[bytes]
    state_fd: int  # -1 for mapped-ram: QEMU opened the file itself


@dataclass
class Early:
    pid_fd: int  # the locked ha.pid
    out: events.EventWriter
    restore: EarlyRestore | None


def begin(name: str, inst_dir: Path) -> Early:
    """Lock, announce, and start QEMU on the saved state if there is a usable one.  Raises AlreadyRunning."""
    os.umask(0o077)  # QEMU's sockets and logs are for this user only
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    out = events.EventWriter(sys.stdout)
    pid_fd = _lock_pid(inst_dir, name)
    # Run directly (by systemd) after a crash, stale sockets of the last run may remain: ours now.
    clear_runtime_files(inst_dir, keep=OWN_PID_FILE)
    out.emit(events.STARTING, f"starting instance {name}")
    restore = None
    try:
        restore = _launch_restore(inst_dir)
    except Exception as e:  # the agent proper tries again the regular way and reports
        log.warning("early restore not started: %s", e)
    return Early(pid_fd, out, restore)


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


def _launch_restore(inst_dir: Path) -> EarlyRestore | None:
    try:
        saved = savedstate.load(inst_dir)
    except savedstate.Unusable:
        return None
    if saved is None or saved.mechanism not in mechanisms.ALL:
        return None
    qemu = host.find_qemu("x86_64", cache_root())
    if savedstate.problems(saved, inst_dir, qemu.version, verify_state=False):
        return None
    argv = [*saved.manifest["argv"], "-incoming", "defer"]
    log.info("starting QEMU: %s", subprocess.list2cmdline(argv))
    popen = subp.spawn_daemon(argv)
    fd = -1
    try:
        qmp = SyncQMP(inst_dir / filenames.QMP_SOCK, QMP_TIMEOUT, alive=lambda: popen.poll() is None)
        try:
            known = {c["capability"] for c in qmp.execute("query-migrate-capabilities")}
            for command, args in mechanisms.setup_commands(saved.mechanism, known):
                qmp.execute(command, args)
            if saved.mechanism != mechanisms.MAPPED_RAM:
                fd = os.open(saved.state, os.O_RDONLY)
                qmp.execute("getfd", {"fdname": mechanisms.FD_NAME}, fd=fd)
            qmp.execute("migrate-incoming", {"uri": mechanisms.incoming_uri(saved.mechanism, saved.state)})
        finally:
            qmp.close()
    except BaseException:
        popen.kill()
        popen.wait()
        if fd >= 0:
            os.close(fd)
        raise
    return EarlyRestore(saved, qemu, popen, fd)
