"""The host agent: one asyncio loop per running instance.

It gets the VM from its driver (made by a factory it is given), keeps the world informed through its event stream,
serves its HTTP API (routes.py), and on SIGINT/SIGTERM stops the VM (saving it when its runtime saveOnStop says
so: stopping.py) and exits.  A service manager that sends the signal (systemd at logout) therefore gets the same
behaviour as `torpor stop`.  How the VM comes up, a cold boot or a restore, is boot.py's; reaching the guest is
guestlink.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torpor.errors import TorporError
from torpor.hostagent import boot, events, stopping
from torpor.hostagent.api import APIServer
from torpor.hostagent.early import OWN_PID_FILE, Early
from torpor.hostagent.guestlink import Guest, GuestLink
from torpor.hostagent.routes import routes
from torpor.hostagent.state import State, StopDuringBoot
from torpor.store import filenames, savedstate
from torpor.store.instance import clear_runtime_files

if TYPE_CHECKING:
    from torpor.driver.base import Driver, Factory
    from torpor.store.records import BootRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


class HostAgent:
    def __init__(
        self, name: str, inst_dir: Path, home: Path, early: Early, *, factory: Factory, guest: Guest | None = None
    ) -> None:
        self.name = name
        self.dir = inst_dir
        self.home = home
        self.events = early.out
        self.early = early
        self.factory = factory
        self.guest: Guest = guest or GuestLink(inst_dir, name, home)
        self.state = State.STARTING
        self.restored = False  # this run resumed a saved state (rather than booting)
        self.stop_requested = asyncio.Event()
        self.started_at = time.time()
        self.boot_seconds: float | None = None
        self.reported: dict[str, str] = {}  # what the guest said in its ready report
        self.degraded = ""  # what went wrong in provisioning, if anything
        # What a restore of this boot needs, the configuration it was booted with among it.
        self.boot_record: BootRecord | None = None
        self.save_on_stop = False  # runtime value: from the config at start, changed through the API
        self.driver: Driver | None = None
        self.discarded: asyncio.Future[None] | None = None  # a restored state being deleted
        self.vm_busy = asyncio.Lock()  # one operation on the VM at a time: a snapshot, a save, a stop
        self.api = APIServer(routes(self))

    async def run(self) -> int:
        """Run the instance until it is stopped; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        for received in self.early.signals:  # before these handlers were in place
            self._on_signal(received)
        code = 0
        try:
            await self.api.start(self.dir / filenames.HA_SOCK)
            try:
                await boot.start(self)
                reason, fields = await self._until_stopped()
            except StopDuringBoot:
                reason, fields = await stopping.stop_vm(self)
            self.events.emit(events.EXITING, reason, ok=True, **fields)
        except Exception as e:
            log.exception("host agent failed")
            self.events.emit(events.EXITING, await self._failure(e), ok=False)
            code = 1
        finally:
            await self._cleanup()
        return code

    def _on_signal(self, sig: int) -> None:
        log.info("received %s", signal.Signals(sig).name)
        self.stop_requested.set()

    async def _until_stopped(self) -> tuple[str, dict[str, Any]]:
        assert self.driver is not None
        exited = asyncio.ensure_future(self.driver.wait())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stop.cancel()
            return f"the guest shut down (QEMU exit code {exited.result()})", {}
        exited.cancel()
        return await stopping.stop_vm(self)

    async def _failure(self, e: Exception) -> str:
        """The message of a failed run, with what QEMU said; the VM, if any, is killed."""
        message = str(e)
        if self.driver is not None:
            with contextlib.suppress(Exception):
                await self.driver.kill()
            tail = self.driver.stderr_tail()
            if tail and tail not in message:
                message += f"\nQEMU said:\n{tail}"
        return message

    async def until(self, aw: Awaitable[T], deadline: float, what: str) -> T:
        """Await ``aw`` unless QEMU exits, a stop is requested or the boot deadline passes first."""
        assert self.driver is not None
        task = asyncio.ensure_future(aw)
        exited: asyncio.Future[int] = asyncio.ensure_future(self.driver.wait())
        stop: asyncio.Future[bool] = asyncio.ensure_future(self.stop_requested.wait())
        waiters: list[asyncio.Future[Any]] = [task, exited, stop]
        timeout = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for f in (exited, stop):
            f.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if exited in done:
            raise TorporError(f"QEMU exited during boot (exit code {exited.result()})")
        if stop in done:
            raise StopDuringBoot()
        try:  # for the diagnosis: a VM that never ran, a guest spinning or halted, and where
            log.error("the guest did not %s in time: %s", what, await asyncio.wait_for(self.driver.where(), 5))
        except Exception as e:  # a TimeoutError says nothing by itself
            log.error("the guest did not %s in time; the driver could not say where the VM is: %r", what, e)
        raise TorporError(
            f"the guest did not {what} within the boot timeout",
            hint=f"see {self.dir / filenames.SERIAL_LOG} for the guest console",
        )

    async def _cleanup(self) -> None:
        self.guest.end()
        await asyncio.to_thread(self._drop_unpaired_ram_file)  # 22 ms for a file of 450 MiB of dirty pages here
        await self.guest.close()
        await self.api.close()
        if self.driver is not None:
            await self.driver.close()
        clear_runtime_files(self.dir, keep=OWN_PID_FILE)
        (self.dir / filenames.HA_PID).unlink(missing_ok=True)
        os.close(self.early.pid_fd)

    def _drop_unpaired_ram_file(self) -> None:
        """Instant mode: remove the guest RAM file unless a saved state pairs with it.

        After a shutdown it is of no use (a cold boot starts from fresh RAM), and removing it at once spares the
        host's disk the write-back of the guest's dirty pages and frees its space now.
        """
        if savedstate.present(self.dir):
            return
        try:
            (self.dir / filenames.MEMORY_FILE).unlink()
        except FileNotFoundError:
            return
        log.info("removed the guest RAM file (no saved state pairs with it)")

    # -- what the API serves (routes.py) ----------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "pid": os.getpid(),
            "state": self.state.value,
            "ready": self.state is State.READY,
            "restored": self.restored,
            "startedAt": self.started_at,
            "bootSeconds": self.boot_seconds,
            "guest": self.reported,
            "degraded": self.degraded,
            "saveOnStop": self.save_on_stop,
            "forwards": self.guest.forwards,
            "mounts": self.guest.mounts.info(await self.guest.mount_points() if self.state is State.READY else None),
        }
        if self.driver is not None:
            info["vm"] = await self.driver.inspect()
        if self.boot_record is not None:
            info["configDigest"] = self.boot_record["configDigest"]
        return info

    def can_save(self) -> bool:
        return self.driver is None or self.driver.features.save_restore

    def accepts_vm_operations(self) -> bool:
        """Whether a snapshot may be taken now: the guest is up and no stop or other operation is under way."""
        return self.state is State.READY and not self.vm_busy.locked() and not self.stop_requested.is_set()


def main(name: str, inst_dir: Path, home: Path, early: Early) -> int:
    """Run the host agent after :func:`torpor.hostagent.early.begin`: events on stdout, log on stderr."""
    from torpor.driver.qemu.factory import QemuFactory

    agent = HostAgent(name, inst_dir, home, early, factory=QemuFactory())
    return asyncio.run(agent.run())
