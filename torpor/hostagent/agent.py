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
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from torpor.config.layering import Effective, load_effective
from torpor.config.schema import Config
from torpor.driver.qemu import host
from torpor.driver.qemu.cmdline import HostForward
from torpor.driver.qemu.driver import QemuDriver, vm_spec
from torpor.errors import TorporError
from torpor.guest import builder, cidata, images
from torpor.guest import ssh as guest_ssh
from torpor.guest.agent import GuestAgent, GuestAgentError
from torpor.hostagent import events
from torpor.hostagent.api import APIServer, Request
from torpor.hostagent.forwarder import PortForwarder
from torpor.hostagent.sshaccess import SSHAccess
from torpor.store import atomic, filenames
from torpor.store.instance import read_instance_yaml

log = logging.getLogger(__name__)


T = TypeVar("T")
GUEST_PROVISION_LOG = "/var/log/torpor/provision.log"


class AlreadyRunning(TorporError):
    pass


class StopDuringBoot(Exception):
    """A stop was requested before the guest was ready."""


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
        self.default_guest = False  # the guest torpor builds, which reports ready and provisioning itself
        self.degraded = ""  # what went wrong in provisioning, if anything
        self.guest_agent = GuestAgent()
        self.ssh = SSHAccess(inst_dir, name)
        self.forwarder: PortForwarder | None = None

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
            try:
                await self._boot()
                reason = await self._run_until_stopped()
            except StopDuringBoot:
                reason = await self._stop_vm()
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
        image = config.image_for_arch()
        self.default_guest = bool(image.location and image.location.startswith(images.BUILD_SCHEME))
        ssh_port = await asyncio.to_thread(self._prepare_guest_access, config)
        spec = replace(
            vm_spec(self.dir, self.name, config, accel, images.kernel_cmdline(image)),
            ready_socket=self.dir / filenames.READY_SOCK if self.default_guest else None,
            cidata=self.dir / filenames.CIDATA,
            qga_socket=self.dir / filenames.QGA_SOCK,
            forwards=(HostForward("127.0.0.1", ssh_port, 22),),
        )
        self.driver = QemuDriver(qemu, spec, config.disk)
        ready_line: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def connect_channels() -> None:
            if spec.ready_socket is not None:
                reader, writer = await asyncio.open_unix_connection(str(spec.ready_socket))
                self._channels.append(writer)  # dropping the writer would close the connection
                self._tasks.add(asyncio.create_task(self._read_ready(reader, ready_line)))
            await self.guest_agent.connect(self.dir / filenames.QGA_SOCK)

        t0 = time.monotonic()
        self.events.emit(events.BOOTING, f"booting (QEMU {qemu.version}, {accel.name})")
        await self.driver.start(connect_channels)
        deadline = t0 + config.bootTimeout
        if self.default_guest:
            self.guest = parse_ready(await self._until(ready_line, deadline, "report ready"))
        await self._until(self.ssh.wait_until_answering(), deadline, "answer on SSH")
        await self.ssh.start_master()
        message = f"ready in {time.monotonic() - t0:.1f} s"
        degraded = await self._check_provisioning()
        if degraded:
            message += f", but provisioning failed: {degraded}"
        self.ready = True
        self.boot_seconds = time.monotonic() - t0
        self.degraded = degraded
        self.events.emit(
            events.READY, message, seconds=self.boot_seconds, guest=self.guest, degraded=degraded, sshPort=ssh_port
        )
        self.forwarder = PortForwarder(self.guest_agent, self.ssh, config.portForwards, self.events.emit)
        self._tasks.add(asyncio.create_task(self.forwarder.run()))

    def _prepare_guest_access(self, config: Config) -> int:
        """Write this boot's cidata and ssh config; return the host port forwarded to the guest's SSH."""
        key, pubkey = guest_ssh.ensure_keypair(self.home)
        user = cidata.GuestUser.from_host()
        cidata.write(self.dir, self.name, user, pubkey, config.provision)
        port = config.ssh.localPort or guest_ssh.free_port()
        guest_ssh.write_config(self.dir, self.name, port, user.name, key)
        return port

    async def _until(self, aw: Awaitable[T], deadline: float, what: str) -> T:
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
        raise TorporError(
            f"the guest did not {what} within the boot timeout",
            hint=f"see {self.dir / filenames.SERIAL_LOG} for the guest console",
        )

    async def _check_provisioning(self) -> str:
        """Copy the guest's provisioning log out; return what failed, or "" if nothing did."""
        status = self.guest.get("provision", "none")
        if status == "none":
            return ""
        try:
            text = (await self.guest_agent.read_file(GUEST_PROVISION_LOG)).decode(errors="replace")
        except GuestAgentError as e:
            text = f"(could not read {GUEST_PROVISION_LOG}: {e})\n"
        atomic.write_text(self.dir / filenames.PROVISION_LOG, text, 0o600)
        for line in text.splitlines():
            log.info("provision: %s", line)
        if not status.startswith("failed:"):
            return ""
        _, script, code = [*status.split(":"), "", ""][:3]
        tail = "\n".join(text.rstrip().splitlines()[-10:])
        return f"{script} exited with code {code}:\n{tail}"

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
        return await self._stop_vm()

    async def _stop_vm(self) -> str:
        assert self.driver is not None and self.effective is not None
        await self._stop_guest_access()
        if not self.ready:
            self.events.emit(events.STOPPING, "stop requested during boot; stopping QEMU")
            await self.driver.kill()
            return "stopped during boot"
        timeout = self.effective.config.shutdownTimeout
        self.events.emit(events.STOPPING, f"shutting down the guest (waiting up to {timeout} s)")
        outcome = await self.driver.stop(timeout)
        return outcome.detail

    async def _stop_guest_access(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.forwarder is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.forwarder.clear(), 10)
            self.forwarder = None
        await self.ssh.stop_master()

    async def _cleanup(self) -> None:
        await self._stop_guest_access()
        self.guest_agent.close()
        for w in self._channels:
            w.close()
        await self.api.close()
        if self.driver is not None:
            await self.driver.close()
        for n in filenames.RUNTIME_FILES:
            if n == filenames.HA_PID:
                continue
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
            "degraded": self.degraded,
            "forwards": sorted(str(f) for f in self.forwarder.active) if self.forwarder else [],
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
