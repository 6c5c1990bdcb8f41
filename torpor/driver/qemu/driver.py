"""The QEMU driver: runs one VM under the host agent, over one long-lived QMP session."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor import subp
from torpor.config.machine import Machine
from torpor.driver.base import Accel, BeforeRun, Driver, Features, StopOutcome, VMState
from torpor.driver.qemu import cmdline, firmware, mechanisms, migration, process, virtiofsd
from torpor.driver.qemu.host import Qemu
from torpor.driver.qemu.qmp import QMPSession
from torpor.errors import DriverError, QMPCommandError
from torpor.store import filenames, savedstate

log = logging.getLogger(__name__)

QMP_CONNECT_TIMEOUT = 30.0
QUIT_TIMEOUT = 10.0
UNPLUG_TIMEOUT = 10.0  # for the guest to let a device go (tens of milliseconds under TCG here)
PERIPHERALS = "/machine/peripheral"  # where QOM keeps the devices that have an id


@dataclass(frozen=True)
class Launched:
    """A QEMU the host agent's early path started with ``-incoming defer`` and set loading a saved state."""

    popen: subprocess.Popen[bytes]
    state_fd: int  # -1 for mapped-ram (QEMU opened the file) and multifd (relayed); closed by the driver
    running: bool  # the early path saw the load through and let the VM run
    position: migration.Position | None  # how far the load is (see migration.start_incoming)


@dataclass(frozen=True)
class Incoming:
    """The saved state a driver is made to restore: its file and mechanism, and a QEMU already loading it."""

    state: Path
    mechanism: str
    launched: Launched | None = None


def vm_spec(inst_dir: Path, name: str, machine: Machine, accel: Accel, kernel_cmdline: str) -> cmdline.VMSpec:
    kernel = inst_dir / filenames.KERNEL
    initrd = inst_dir / filenames.INITRD
    return cmdline.VMSpec(
        name=name,
        arch=machine.arch,
        accel=accel.name,
        cpus=machine.cpus,
        memory=machine.memory,
        disk=inst_dir / filenames.DISK,
        kernel=kernel if kernel.exists() else None,
        initrd=initrd if initrd.exists() else None,
        kernel_cmdline=kernel_cmdline,
        memory_file=inst_dir / filenames.MEMORY_FILE if machine.save_mode == "instant" else None,
        qmp_socket=inst_dir / filenames.QMP_SOCK,
        ready_socket=inst_dir / filenames.READY_SOCK,
        serial_log=inst_dir / filenames.SERIAL_LOG,
        pidfile=inst_dir / filenames.QEMU_PID,
    )


class QemuDriver:
    features = Features(save_restore=True, snapshots=True)

    def __init__(
        self,
        qemu: Qemu,
        spec: cmdline.VMSpec,
        accel: Accel,
        argv: list[str] | None = None,
        incoming: Incoming | None = None,
    ) -> None:
        """``argv`` replaces the command line built from ``spec`` (a restore reuses the boot's exact argv);
        ``incoming`` is the saved state a restore loads."""
        self.qemu = qemu
        self.spec = spec
        self.accel = accel
        self.ram_file = spec.memory_file
        self._argv = argv
        self._incoming = incoming
        self.qmp = QMPSession(f"torpor-{spec.name}")
        self._proc: process.QemuProcess | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None
        self._virtiofsd: list[virtiofsd.Virtiofsd] = []

    # -- host agent side ------------------------------------------------------------------------------------
    @property
    def argv(self) -> list[str]:
        return list(self._argv) if self._argv is not None else cmdline.build(self.qemu.binary, self.spec)

    def machine_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "qemu": {"binary": self.qemu.binary, "version": self.qemu.version},
            "machine": cmdline.MACHINES[self.spec.arch],
            "argv": self.argv,
        }
        fw = firmware.of_spec(self.spec.kernel, self.spec.uefi)
        if fw is not None:
            record["firmware"] = firmware.record(fw)
        return record

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    async def start(self, before_run: BeforeRun) -> None:
        await self._start_virtiofsd()
        await self._launch(self.argv)
        await before_run()
        await self.qmp.execute("cont")

    async def restore(
        self,
        before_run: BeforeRun,
        *,
        progress: migration.Progress | None = None,
        while_loading: Callable[[], None] | None = None,
    ) -> None:
        """Start QEMU with the boot's command line, load the saved state, let the VM run.

        A QEMU the early path launched is adopted: one still loading the state, or one that has loaded it and
        runs (then ``while_loading`` and ``before_run`` run at once, the VM having run already);
        ``while_loading`` runs once QEMU has started reading the state: work that may overlap the load.
        """
        assert self._incoming is not None, "a driver made for a cold boot restores nothing"
        state, mechanism, launched = self._incoming.state, self._incoming.mechanism, self._incoming.launched
        if launched is None:
            await self._launch([*self.argv, "-incoming", "defer"])
        else:
            await self._adopt(launched.popen)
        if launched is not None and launched.running:
            if launched.state_fd >= 0:
                os.close(launched.state_fd)
            if while_loading is not None:
                while_loading()
            await before_run()
            return
        fd = -1
        try:
            if launched is not None:
                fd, position = launched.state_fd, launched.position
            else:
                fd, position = await migration.start_incoming(self.qmp, mechanism, state, self._relay_socket)
            if while_loading is not None:
                while_loading()
            await migration.wait_loaded(self.qmp, position, self._running, progress)
            await before_run()
        except DriverError as e:
            tail = self.stderr_tail()
            raise DriverError(f"{e}" + (f": {tail}" if tail else "")) from None
        finally:
            if fd >= 0:
                os.close(fd)
        await self.qmp.execute("cont")

    async def save(
        self,
        state: Path,
        progress: migration.Progress | None = None,
        *,
        written: Callable[[], None] | None = None,
    ) -> tuple[str, dict[str, object]]:
        """Pause the VM and write its state to ``state`` with the best mechanism this QEMU has.

        Returns the mechanism and QEMU's statistics; the caller fsyncs and names the file.  ``written``: see
        :func:`migration.save`.
        """
        known = await migration.capabilities(self.qmp)
        mechanism = self._mechanism(known, state)
        log.info("saving the machine state (%s) to %s", mechanism, state)
        return mechanism, await migration.save(
            self.qmp, mechanism, state, known, progress, relay_socket=self._relay_socket, written=written
        )

    def _mechanism(self, known: set[str], state: Path) -> str:
        wanted = mechanisms.wanted()
        mechanism = mechanisms.choose(known, self.ram_file is not None, state, wanted)
        if wanted is not None and mechanism != wanted:
            log.warning("%s=%s cannot be used for this save: using %s", mechanisms.CHOICE_ENV, wanted, mechanism)
        return mechanism

    async def snapshot(
        self,
        tag: str,
        state: Path,
        ram_copy: Path,
        progress: migration.Progress | None = None,
        while_paused: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[str, dict[str, object]]:
        """Capture disk, RAM and devices: the disk as internal qcow2 snapshot ``tag``, devices (and RAM) in
        ``state``; with RAM in a shared file (instant mode), the RAM as a sparse copy of that file in ``ram_copy``
        (copying only its allocated extents is much cheaper than migrating every page of it); a UEFI guest's
        variables file beside ``state``.

        The VM is paused for the disk snapshot and the copies and resumed at once; the caller fsyncs and names
        the files.
        """
        was_running = bool((await self.qmp.execute("query-status")).get("running"))
        await self.qmp.execute("stop")
        disk_taken = False
        try:
            await self.qmp.execute("blockdev-snapshot-internal-sync", {"device": cmdline.DISK_ID, "name": tag})
            disk_taken = True
            known = await migration.capabilities(self.qmp)
            mechanism = self._mechanism(known, state)
            stats = await migration.save(self.qmp, mechanism, state, known, progress, relay_socket=self._relay_socket)
            if self.ram_file is not None:
                # Paused, the guest's RAM is what the file's pages (in the page cache) hold.
                await asyncio.to_thread(savedstate.sparse_copy, self.ram_file, ram_copy)
            if self.spec.uefi is not None:  # UEFI's variables, as the paused guest left them, beside the state
                variables = self.spec.uefi[1]
                await asyncio.to_thread(firmware.private_copy, variables, state.parent / variables.name)
            if while_paused is not None:
                await while_paused()
        except (DriverError, OSError):
            if disk_taken:
                with contextlib.suppress(DriverError):
                    await self.qmp.execute(
                        "blockdev-snapshot-delete-internal-sync", {"device": cmdline.DISK_ID, "name": tag}
                    )
            raise
        finally:
            if was_running:
                await self.qmp.execute("cont")
        return mechanism, stats

    async def delete_snapshot(self, tag: str) -> None:
        """Delete the disk's internal snapshot ``tag`` while the VM runs (QEMU holds the image)."""
        await self.qmp.execute("blockdev-snapshot-delete-internal-sync", {"device": cmdline.DISK_ID, "name": tag})

    @property
    def _relay_socket(self) -> Path:
        """Where the multifd mechanism's relay and QEMU meet: beside QMP's socket, in the instance directory."""
        return self.spec.qmp_socket.parent / filenames.MIGRATION_SOCK

    @property
    def _shares_in(self) -> bool:
        """Whether the virtiofs devices are plugged in: whether the command line has them (a restore's has not:
        they are plugged after)."""
        shares = cmdline.shares(self.spec)
        return bool(shares) and _without(self.argv, shares) != self.argv

    async def detach_shares(self) -> None:
        """Unplug the virtiofs devices, which the guest has unmounted: QEMU cannot save a vhost-user-fs device
        (its daemon keeps the file system's state), so a save's state and command line are without them."""
        if not self._shares_in:
            return
        count = len(self.spec.virtiofs)
        devices = {cmdline.share_device(i) for i in range(count)}
        for dev in sorted(devices):
            await self.qmp.execute("device_del", {"id": dev})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNPLUG_TIMEOUT
        while left := devices & {p["name"] for p in await self.qmp.execute("qom-list", {"path": PERIPHERALS})}:
            if loop.time() > deadline:
                raise DriverError(f"the guest did not let the virtiofs device{'s' * (len(left) > 1)} go")
            await asyncio.sleep(0.01)
        self._argv = _without(self.argv, cmdline.shares(self.spec))
        for i in range(count):
            await self._remove_chardev(cmdline.share_chardev(i), deadline)
        await self._stop_virtiofsd()
        log.info("virtiofs devices unplugged")

    async def _remove_chardev(self, chardev: str, deadline: float) -> None:
        """Remove ``chardev``, retrying until ``deadline``: a device plugged in after a restore holds its chardev
        a little longer than it takes to go."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.qmp.execute("chardev-remove", {"id": chardev})
                return
            except QMPCommandError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def attach_shares(self) -> None:
        """Plug the virtiofs devices in again (after a restore, a snapshot or a failed save), each with a new
        virtiofsd; the guest mounts them after."""
        if not self.spec.virtiofs or self._shares_in:
            return
        await self._start_virtiofsd()
        for i, share in enumerate(self.spec.virtiofs):
            chardev, device = cmdline.share_plug(share, i)
            await self.qmp.execute("chardev-add", chardev)
            await self.qmp.execute("device_add", device)
        self._argv = [*self.argv, *cmdline.shares(self.spec)]
        log.info("virtiofs devices plugged in")

    async def _start_virtiofsd(self) -> None:
        if not self.spec.virtiofs:
            return
        binary = virtiofsd.find()
        for share in self.spec.virtiofs:
            daemon = virtiofsd.Virtiofsd(binary, share.path, share.socket, share.log)
            await daemon.start()
            self._virtiofsd.append(daemon)

    async def _stop_virtiofsd(self) -> None:
        daemons, self._virtiofsd = self._virtiofsd, []
        await asyncio.gather(*(d.stop() for d in daemons))

    async def resume(self) -> None:
        """Let a paused VM run again (after a failed save)."""
        await self.qmp.execute("cont")

    async def quit(self) -> int:
        """Quit QEMU at once (the guest is not asked) and wait for it to exit."""
        with contextlib.suppress(DriverError):
            await self.qmp.execute("quit")
        try:
            return await asyncio.wait_for(self.wait(), QUIT_TIMEOUT)
        except TimeoutError:
            await self.kill()
            return -9

    async def _launch(self, argv: list[str]) -> None:
        await self._adopt(subp.spawn_daemon(argv))

    async def _adopt(self, popen: subprocess.Popen[bytes]) -> None:
        """Watch a started QEMU and connect the QMP session."""
        self._proc = process.QemuProcess(popen)
        self._stderr_task = asyncio.create_task(self._read_stderr())
        try:
            await self.qmp.connect(self.spec.qmp_socket, QMP_CONNECT_TIMEOUT, alive=self._running)
        except DriverError:
            code = await self.wait() if not self._running() else None
            tail = self.stderr_tail()
            raise DriverError(
                f"QEMU did not start{f' (exit code {code})' if code is not None else ''}"
                + (f": {tail}" if tail else "")
            ) from None

    def _running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _read_stderr(self) -> None:
        assert self._proc is not None
        async for line in self._proc.stderr_lines():
            if line:
                self._stderr_tail.append(line)
                log.warning("qemu: %s", line)

    async def stop(self, timeout: float) -> StopOutcome:
        if not self._running():
            return StopOutcome(True, "QEMU had already exited")
        with contextlib.suppress(DriverError):
            await self.qmp.execute("system_powerdown")
        try:
            await asyncio.wait_for(self.wait(), timeout)
            return StopOutcome(True, "the guest shut down")
        except TimeoutError:
            pass
        log.warning("the guest did not shut down within %.0f s; quitting QEMU", timeout)
        with contextlib.suppress(DriverError):
            await self.qmp.execute("quit")
        try:
            await asyncio.wait_for(self.wait(), QUIT_TIMEOUT)
        except TimeoutError:
            await self.kill()
        return StopOutcome(False, f"the guest did not shut down within {timeout:.0f} s; QEMU was stopped")

    async def kill(self) -> None:
        if self._running():
            assert self._proc is not None
            self._proc.kill()
        await self.wait()

    async def inspect(self) -> dict[str, object]:
        state = VMState.NOT_STARTED
        if self._proc is not None:
            state = VMState.EXITED
            if self._running():
                status = await self.qmp.execute("query-status")
                state = VMState.RUNNING if status.get("running") else VMState.PAUSED
        return {"state": state.value, "qemuPid": self.pid, "qemuVersion": self.qemu.version, "accel": self.accel.name}

    async def where(self) -> str:
        """Where the VM is, for a boot that timed out: QEMU's run state and each vCPU's instruction pointer."""
        if not self._running():
            return "QEMU has exited"
        status = await self.qmp.execute("query-status")
        # QMP has no command for the vCPUs' registers; this diagnosis is the one use of HMP.
        regs = await self.qmp.execute("human-monitor-command", {"command-line": "info registers -a"})
        cpus = [
            line.split()[0] + (" halted" if "HLT=1" in line else "")
            for line in regs.splitlines()
            if line.startswith(("RIP=", "EIP="))  # EIP: a vCPU still in 32-bit or real mode
        ]
        return f"VM {status.get('status')}; vCPUs at {', '.join(cpus) or '?'}"

    async def wait(self) -> int:
        if self._proc is None:
            return 0
        code = await self._proc.wait()
        if self._stderr_task is not None:
            await self._stderr_task
        return code

    async def close(self) -> None:
        await self.qmp.close()
        await self._stop_virtiofsd()


def _without(argv: list[str], part: list[str]) -> list[str]:
    """``argv`` with the arguments ``part`` taken out where they appear together."""
    for i in range(len(argv) - len(part) + 1):
        if argv[i : i + len(part)] == part:
            return argv[:i] + argv[i + len(part) :]
    return argv


def _implements_driver(d: QemuDriver) -> Driver:
    # mypy checks here that QemuDriver satisfies the driver protocols.
    return d
