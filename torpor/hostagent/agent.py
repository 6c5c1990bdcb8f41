"""The host agent: one asyncio loop per running instance.

It launches QEMU through the driver, keeps the single QMP session, tells the world what happens through its
event stream, answers its HTTP API, and on SIGINT/SIGTERM stops the VM (gracefully, bounded) and exits.
A service manager that sends the signal (systemd at logout) therefore gets the same behaviour as `torpor stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from torpor.config.layering import Effective, load_effective
from torpor.driver.qemu import host
from torpor.driver.qemu.driver import QemuDriver, vm_spec
from torpor.errors import TorporError
from torpor.guest import builder, images
from torpor.hostagent import events
from torpor.hostagent.api import APIServer, Request
from torpor.store import filenames
from torpor.store.instance import read_instance_yaml

log = logging.getLogger(__name__)


class AlreadyRunning(TorporError):
    pass


class HostAgent:
    def __init__(self, name: str, inst_dir: Path, home: Path, out: events.EventWriter) -> None:
        self.name = name
        self.dir = inst_dir
        self.home = home
        self.events = out
        self.stop_requested = asyncio.Event()
        self.ready = False
        self.started_at = time.time()
        self.boot_seconds: float | None = None
        self.guest: dict[str, str] = {}  # what the guest said in its ready report
        self.effective: Effective | None = None
        self.driver: QemuDriver | None = None
        self.api = APIServer({("GET", "/v1/info"): self._get_info})
        self._pid_fd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # keeps background tasks referenced
        self._channels: list[asyncio.StreamWriter] = []

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run the instance until it is stopped; return the process exit code."""
        try:
            self._lock_pid()
        except AlreadyRunning as e:
            self.events.emit(events.EXITING, str(e), ok=False)
            return 3
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        code = 0
        try:
            await self.api.start(self.dir / filenames.HA_SOCK)
            await self._boot()
            reason = await self._run_until_stopped()
            self.events.emit(events.EXITING, reason, ok=True)
        except Exception as e:
            log.exception("host agent failed")
            message = str(e)
            if self.driver is not None:
                with contextlib.suppress(Exception):
                    await self.driver.kill()
                tail = self.driver.stderr_tail()
                if tail and tail not in message:
                    message += f"\nQEMU said:\n{tail}"
            self.events.emit(events.EXITING, message, ok=False)
            code = 1
        finally:
            await self._cleanup()
        return code

    def _on_signal(self, sig: int) -> None:
        log.info("received %s", signal.Signals(sig).name)
        self.stop_requested.set()

    def _lock_pid(self) -> None:
        fd = os.open(self.dir / filenames.HA_PID, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"instance {self.name!r} already has a running host agent") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._pid_fd = fd

    async def _boot(self) -> None:
        self.events.emit(events.STARTING, f"starting instance {self.name}")
        self.effective = load_effective(
            self.home, read_instance_yaml(self.dir), str(self.dir / filenames.INSTANCE_YAML)
        )
        config = self.effective.config
        qemu = await asyncio.to_thread(host.find_qemu, config.arch)
        kernel = self.dir / filenames.KERNEL
        accel = await asyncio.to_thread(
            host.probe_accel, qemu, kernel if kernel.exists() else None, builder.cache_root()
        )
        if accel.name != "kvm":
            self.events.emit(events.NOTICE, f"using TCG software emulation (slower): {accel.reason}")
        spec = vm_spec(self.dir, self.name, config, accel, images.kernel_cmdline(config.image_for_arch()))
        self.driver = QemuDriver(qemu, spec, config.disk)
        ready_line: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def connect_channels() -> None:
            reader, writer = await asyncio.open_unix_connection(str(self.dir / filenames.READY_SOCK))
            self._channels.append(writer)  # dropping the writer would close the connection
            self._tasks.add(asyncio.create_task(self._read_ready(reader, ready_line)))

        t0 = time.monotonic()
        self.events.emit(events.BOOTING, f"booting (QEMU {qemu.version}, {accel.name})")
        await self.driver.start(connect_channels)
        exited: asyncio.Future[int] = asyncio.ensure_future(self.driver.wait())
        stop: asyncio.Future[bool] = asyncio.ensure_future(self.stop_requested.wait())
        waiters: list[asyncio.Future[Any]] = [ready_line, exited, stop]
        done, _ = await asyncio.wait(
            waiters, timeout=config.bootTimeout, return_when=asyncio.FIRST_COMPLETED
        )
        exited.cancel()
        stop.cancel()
        if ready_line in done:
            self.ready = True
            self.boot_seconds = time.monotonic() - t0
            self.guest = parse_ready(ready_line.result())
            self.events.emit(
                events.READY, f"ready in {self.boot_seconds:.1f} s", seconds=self.boot_seconds, guest=self.guest
            )
            return
        if exited in done:
            raise TorporError(f"QEMU exited during boot (exit code {exited.result()})")
        if stop in done:
            return  # _run_until_stopped handles it
        raise TorporError(
            f"the guest did not report ready within {config.bootTimeout} s",
            hint=f"see {self.dir / filenames.SERIAL_LOG} for the guest console",
        )

    @staticmethod
    async def _read_ready(reader: asyncio.StreamReader, ready: asyncio.Future[str]) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                if line.startswith(b"ready") and not ready.done():
                    ready.set_result(line.decode().strip())

    async def _run_until_stopped(self) -> str:
        assert self.driver is not None and self.effective is not None
        exited = asyncio.ensure_future(self.driver.wait())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stop.cancel()
            return f"the guest shut down (QEMU exit code {exited.result()})"
        exited.cancel()
        if not self.ready:
            self.events.emit(events.STOPPING, "stop requested during boot; stopping QEMU")
            await self.driver.kill()
            return "stopped during boot"
        timeout = self.effective.config.shutdownTimeout
        self.events.emit(events.STOPPING, f"shutting down the guest (waiting up to {timeout} s)")
        outcome = await self.driver.stop(timeout)
        return outcome.detail

    async def _cleanup(self) -> None:
        for w in self._channels:
            w.close()
        await self.api.close()
        if self.driver is not None:
            await self.driver.close()
        for n in (filenames.HA_SOCK, filenames.QMP_SOCK, filenames.READY_SOCK, filenames.QEMU_PID):
            (self.dir / n).unlink(missing_ok=True)
        if self._pid_fd is not None:
            (self.dir / filenames.HA_PID).unlink(missing_ok=True)
            os.close(self._pid_fd)

    # -- API ------------------------------------------------------------------------------------------------
    async def _get_info(self, _req: Request) -> tuple[int, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "pid": os.getpid(),
            "ready": self.ready,
            "startedAt": self.started_at,
            "bootSeconds": self.boot_seconds,
            "guest": self.guest,
        }
        if self.driver is not None:
            info["vm"] = await self.driver.inspect()
        if self.effective is not None:
            info["configDigest"] = self.effective.digest()
        return 200, info


def parse_ready(line: str) -> dict[str, str]:
    """The ``key=value`` fields of the guest's ready report (``ready uptime=3.1 boots=2``)."""
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def main(name: str, inst_dir: Path, home: Path) -> int:
    """Entry point of ``torpor hostagent NAME``: events on stdout, log on stderr."""
    os.umask(0o077)  # QEMU's sockets and logs are for this user only
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    agent = HostAgent(name, inst_dir, home, events.EventWriter(sys.stdout))
    return asyncio.run(agent.run())
