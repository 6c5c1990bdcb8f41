"""The host agent's first steps, taken before its heavy imports (asyncio, qemu.qmp, pydantic, the guest code).

A restore is only as quick as QEMU gets going.  So the agent, once it holds its pid lock, checks the saved state
(the cheap checks), starts QEMU with the saved boot's command line and ``-incoming defer``, and sets it loading
the state over a few synchronous QMP commands.  If the state file is as the save left it (no digest to verify),
it waits for the load here, lets the VM run and starts the SSH master at once; the rest of the agent is imported
while the guest answers SSH.  (Waiting for the load in the agent proper, its imports and start-up kept 2 cores
busy beside QEMU's load: measured, the VM ran 0.15 s later.)  A state to verify, or anything unexpected, leaves
the decision to the agent proper, which repeats the checks, reports, and cold boots if it must.  SIGINT and
SIGTERM are noted here and handed to the agent proper.

Only light modules may be imported here (the standard library's basics and torpor's store and QEMU facts).
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

from torpor import subp
from torpor.driver.qemu import host, mechanisms
from torpor.driver.qemu.qmpsync import SyncQMP
from torpor.errors import TorporError
from torpor.guest import ssh
from torpor.hostagent import events
from torpor.store import filenames, savedstate
from torpor.store.cache import cache_root
from torpor.store.instance import clear_runtime_files, home

log = logging.getLogger(__name__)

OWN_PID_FILE = frozenset({filenames.HA_PID})  # removed last, while its lock is still held
QMP_TIMEOUT = 30.0
POLL = 0.005


class AlreadyRunning(TorporError):
    pass


class EarlyRestore(NamedTuple):
    """QEMU started and loading ``saved`` (the driver adopts the process and closes ``state_fd``)."""

    saved: savedstate.Saved
    qemu: host.Qemu
    popen: subprocess.Popen[bytes]
    state_fd: int  # -1 for mapped-ram (QEMU opened the file itself) and multifd (the relay sends it)
    position: mechanisms.Position | None  # how far the load is (mapped-ram: unknown)
    running: bool = False  # the load finished here and the VM runs
    ssh_master: subprocess.Popen[bytes] | None = None  # started as the VM ran


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
    if saved is None or saved.mechanism not in mechanisms.ALL:
        return None
    qemu = host.find_qemu("x86_64", cache_root())
    if savedstate.problems(saved, inst_dir, qemu.version, verify_state=False):
        return None
    argv = [*saved.manifest["argv"], "-incoming", "defer"]
    out.emit(events.BOOTING, restoring_message(saved), restoring=True)
    popen = subp.spawn_daemon(argv)
    fd = -1
    position: mechanisms.Position | None = None
    running = False
    try:
        boot = saved.manifest["boot"]  # while QEMU starts up
        key, _ = ssh.ensure_keypair(home())
        ssh.write_config(inst_dir, name, boot["sshPort"], boot["user"], key)
        qmp = SyncQMP(inst_dir / filenames.QMP_SOCK, QMP_TIMEOUT, alive=lambda: popen.poll() is None)
        try:
            known = {c["capability"] for c in qmp.execute("query-migrate-capabilities")}
            for command, args in mechanisms.setup_commands(saved.mechanism, known):
                qmp.execute(command, args)
            if saved.mechanism in (mechanisms.STREAM, mechanisms.SHARED_RAM):
                fd = os.open(saved.state, os.O_RDONLY)
                qmp.execute("getfd", {"fdname": mechanisms.FD_NAME}, fd=fd)
                position = mechanisms.stream_position(fd, saved.size)
            relay_socket = inst_dir / filenames.MIGRATION_SOCK
            qmp.execute(
                "migrate-incoming", {"uri": mechanisms.incoming_uri(saved.mechanism, saved.state, relay_socket)}
            )
            if saved.mechanism == mechanisms.MULTIFD:
                from torpor.driver.qemu import relay  # not on the path of the other mechanisms

                position = relay.Feed(relay_socket, saved.state).progress
            if savedstate.state_unchanged(saved):
                progress = events.ProgressEmitter(out, "restoring")
                running = _run_when_loaded(qmp, popen, position, progress=progress, signals=signals)
        finally:
            qmp.close()
    except BaseException:
        popen.kill()
        popen.wait()
        if fd >= 0:
            os.close(fd)
        raise
    if not running:
        return EarlyRestore(saved, qemu, popen, fd, position)
    log.info("the saved state is loaded and the VM runs; connecting SSH")
    try:
        master = ssh.spawn_master(inst_dir, name)
    except OSError as e:  # the agent proper starts one and reports if that fails too
        log.warning("starting the SSH master: %s", e)
        master = None
    return EarlyRestore(saved, qemu, popen, fd, position, running=True, ssh_master=master)


def restoring_message(saved: savedstate.Saved) -> str:
    return f"restoring the saved state ({saved.size / 2**20:.0f} MiB, saved {time.time() - saved.created:.0f} s ago)"


def _run_when_loaded(
    qmp: SyncQMP,
    popen: subprocess.Popen[bytes],
    position: mechanisms.Position | None,
    *,
    progress: events.ProgressEmitter,
    signals: list[int],
) -> bool:
    """Wait until QEMU has loaded the state, then let the VM run.  False, with the VM not run, if the load fails,
    QEMU exits or a stop is asked for: the agent proper then goes on (and reports) as if it had waited itself.

    The rule is migration.wait_loaded's: a `cont` sent while QEMU is still "inmigrate" would be ignored.
    ``position`` (None for mapped-ram) feeds ``progress``.
    """
    while popen.poll() is None and not signals:
        if qmp.execute("query-status").get("status") != "inmigrate":
            if qmp.execute("query-migrate").get("status") == "failed":
                return False
            qmp.execute("cont")
            return True
        if position is not None:
            progress(*position())
        time.sleep(POLL)
    return False
