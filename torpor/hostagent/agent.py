"""The host agent: one asyncio loop per running instance.

It launches QEMU through the driver, keeps the single QMP session, tells the world what happens through its
event stream, answers its HTTP API, and on SIGINT/SIGTERM stops the VM (gracefully, bounded) and exits.
A service manager that sends the signal (systemd at logout) therefore gets the same behaviour as `torpor stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torpor.config import sources
from torpor.driver.qemu import host
from torpor.driver.qemu.cmdline import HostForward
from torpor.driver.qemu.driver import Launched, QemuDriver, SavedMachine, vm_spec
from torpor.errors import ConfigError, DriverError, InstanceStateError, QMPCommandError, TorporError
from torpor.guest import ssh as guest_ssh
from torpor.guest.agent import GuestAgent, GuestAgentError
from torpor.hostagent import events, ports, saving, snapshotting
from torpor.hostagent.api import APIServer, HTTPError, Request
from torpor.hostagent.early import OWN_PID_FILE, Early, EarlyRestore, restoring_message
from torpor.hostagent.forwarder import PortForwarder
from torpor.hostagent.sshaccess import SSHAccess
from torpor.store import atomic, filenames, savedstate, snapshots
from torpor.store.cache import cache_root
from torpor.store.instance import clear_runtime_files, read_instance_yaml

if TYPE_CHECKING:
    from torpor.config.layering import Effective
    from torpor.config.schema import Config

log = logging.getLogger(__name__)


T = TypeVar("T")
GUEST_PROVISION_LOG = "/var/log/torpor/provision.log"


class StopDuringBoot(Exception):
    """A stop was requested before the guest was ready."""


class RestoreFailed(Exception):
    """QEMU could not resume from the saved state; the agent cold boots instead."""


class HostAgent:
    def __init__(self, name: str, inst_dir: Path, home: Path, early: Early) -> None:
        self.name = name
        self.dir = inst_dir
        self.home = home
        self.events = early.out
        self._pid_fd = early.pid_fd
        self._early_restore = early.restore
        self._early_signals = early.signals
        self._discarded: asyncio.Future[None] | None = None  # a restored state being deleted
        self.stop_requested = asyncio.Event()
        self.ready = False
        self.restored = False
        self.started_at = time.time()
        self.boot_seconds: float | None = None
        self.guest: dict[str, str] = {}  # what the guest said in its ready report
        # What a restore of this boot needs, the configuration it was booted with among it (as JSON: the restore
        # path does without pydantic).
        self.boot_record: dict[str, Any] = {}
        self.save_on_stop = False  # runtime value: from the config at start, changed through the API
        self.driver: QemuDriver | None = None
        self._vm_busy = asyncio.Lock()  # one operation on the VM at a time: a snapshot, a save, a stop
        self.api = APIServer(
            {
                ("GET", "/v1/info"): self._get_info,
                ("GET", "/v1/driver/config"): self._get_driver_config,
                ("PATCH", "/v1/driver/config"): self._patch_driver_config,
                ("POST", "/v1/snapshots"): self._post_snapshot,
                ("DELETE", "/v1/snapshots"): self._delete_snapshot,
            }
        )
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        for received in self._early_signals:  # before these handlers were in place
            self._on_signal(received)
        code = 0
        try:
            await self.api.start(self.dir / filenames.HA_SOCK)
            try:
                await self._start()
                reason, fields = await self._run_until_stopped()
            except StopDuringBoot:
                reason, fields = await self._stop_vm()
            self.events.emit(events.EXITING, reason, ok=True, **fields)
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

    async def _start(self) -> None:
        early, self._early_restore = self._early_restore, None
        saved: savedstate.Saved | None
        if early is not None:
            qemu, saved = early.qemu, early.saved
        else:
            qemu = await asyncio.to_thread(host.find_qemu, "x86_64", cache_root())
            saved = await self._usable_saved_state(qemu)
        if saved is not None:
            try:
                await self._restore(saved, qemu, early)
                return
            except RestoreFailed as e:
                aside = savedstate.set_aside(self.dir)
                self.events.emit(
                    events.NOTICE,
                    f"could not restore the saved state: {e}; it was kept in {aside.name if aside else '?'}; "
                    "cold booting",
                )
        from torpor.config.layering import load_effective

        effective = load_effective(self.home, read_instance_yaml(self.dir), str(self.dir / filenames.INSTANCE_YAML))
        self.save_on_stop = effective.config.saveOnStop
        await self._cold_boot(effective, qemu)

    def _apply_current_config(self, saved: savedstate.Saved) -> None:
        """While a restore loads: the runtime saveOnStop from the instance file, and a word on edits made to it.

        The restored VM keeps the configuration it was booted with; an edited (even invalid) instance file only
        takes effect at the next cold boot.  Files unchanged since the boot need no validating.
        """
        boot_config = saved.manifest["config"]
        if sources.unchanged_since(saved.manifest["boot"].get("configSources"), self.home, self.dir):
            log.info("the configuration files are unchanged since the boot: not validating them again")
            self.save_on_stop = bool(boot_config["saveOnStop"])
            return
        from torpor.config.layering import load_effective

        try:
            effective = load_effective(self.home, read_instance_yaml(self.dir), str(self.dir / filenames.INSTANCE_YAML))
        except ConfigError as e:
            self.save_on_stop = bool(boot_config.get("saveOnStop"))
            self.events.emit(events.NOTICE, f"{e}\nrestoring with the configuration the VM was saved with")
            return
        self.save_on_stop = effective.config.saveOnStop
        if saved.manifest.get("configDigest") != effective.digest():
            changed = savedstate.changed_fields(boot_config, effective.config.model_dump(mode="json"))
            self.events.emit(
                events.NOTICE,
                f"the configuration changed since the save ({', '.join(changed)}); restoring with the "
                f"configuration the VM was booted with; `torpor restart {self.name}` applies the changes",
                changed=changed,
            )

    async def _usable_saved_state(self, qemu: host.Qemu) -> savedstate.Saved | None:
        """The saved state if one exists and may be restored; anything unusable is set aside with a notice."""
        try:
            saved = savedstate.load(self.dir)
            if saved is None:
                return None
            # The state's checksum is verified during the load (see _restore), not before it.
            problems = await asyncio.to_thread(savedstate.problems, saved, self.dir, qemu.version, verify_state=False)
        except savedstate.Unusable as e:
            problems = [str(e)]
        aside_reason = "; ".join(problems)
        if not problems:
            return saved
        aside = savedstate.set_aside(self.dir)
        self.events.emit(
            events.NOTICE,
            f"not restoring the saved state: {aside_reason}; it was kept in {aside.name if aside else '?'}; "
            "cold booting",
        )
        return None

    async def _accel(self, qemu: host.Qemu) -> host.Accel:
        kernel = self.dir / filenames.KERNEL
        accel = await asyncio.to_thread(host.probe_accel, qemu, kernel if kernel.exists() else None, cache_root())
        if accel.name != "kvm":
            self.events.emit(events.NOTICE, f"using TCG software emulation (slower): {accel.reason}")
        return accel

    async def _cold_boot(self, effective: Effective, qemu: host.Qemu) -> None:
        # Imported here: a restore does without them (urllib, the image builder: 20 ms on its path).
        from torpor.guest import images

        accel = await self._accel(qemu)
        config = effective.config
        image = config.image_for_arch()
        self.default_guest = image.location == images.DEFAULT_GUEST
        ssh_port, user = await asyncio.to_thread(self._prepare_guest_access, config)
        # A cold boot starts from fresh RAM; a RAM file left by an earlier (instant mode) run goes.
        (self.dir / filenames.MEMORY_FILE).unlink(missing_ok=True)
        spec = replace(
            vm_spec(self.dir, self.name, config, accel, images.kernel_cmdline(image)),
            ready_socket=self.dir / filenames.READY_SOCK if self.default_guest else None,
            cidata=self.dir / filenames.CIDATA,
            qga_socket=self.dir / filenames.QGA_SOCK,
            forwards=(HostForward("127.0.0.1", ssh_port, 22),),
        )
        self.driver = QemuDriver(qemu, spec, config.disk)
        # Everything a restore of this boot needs, whatever happens to the instance's YAML meanwhile.
        self.boot_record = {
            "config": config.model_dump(mode="json"),
            "configDigest": effective.digest(),
            "configSources": effective.sources,
            "sshPort": ssh_port,
            "user": user,
            "defaultGuest": self.default_guest,
            "accel": accel.name,
        }
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
        atomic.write_text(self.dir / filenames.BOOT_RECORD, json.dumps({**self.boot_record, "argv": self.driver.argv}))
        deadline = t0 + config.bootTimeout
        if self.default_guest:
            self.guest = parse_ready(await self._until(ready_line, deadline, "report ready"))
        await self._guest_up(t0, deadline, "ready")

    async def _restore(self, saved: savedstate.Saved, qemu: host.Qemu, early: EarlyRestore | None) -> None:
        boot = saved.manifest["boot"]
        self.boot_record = boot
        self.default_guest = bool(boot.get("defaultGuest"))
        accel = host.Accel(boot.get("accel", "tcg"), "as at the boot that was saved")
        # Built from the saved JSON, which the schema validated at the boot.
        spec = vm_spec(self.dir, self.name, SavedMachine.from_record(boot["config"]), accel, "")
        self.driver = QemuDriver(qemu, spec, int(boot["config"]["disk"]), argv=saved.manifest["argv"])
        if early is None:  # else the early path did these
            key, _ = await asyncio.to_thread(guest_ssh.ensure_keypair, self.home)
            guest_ssh.write_config(self.dir, self.name, boot["sshPort"], boot["user"], key)
            self.events.emit(events.BOOTING, restoring_message(saved), restoring=True)
        t0 = time.monotonic()

        # A state file touched since the save has its digest verified while QEMU loads it, before the VM may run.
        # (The early path lets the VM run only if it was not touched.)
        ran_early = early is not None and early.running
        checksum = None
        if not ran_early and not savedstate.state_unchanged(saved):
            log.info("the state file changed since the save (its change time says so): verifying its digest")
            checksum = asyncio.ensure_future(
                asyncio.to_thread(savedstate.digest_matches, saved.state, saved.manifest["state"].get("digest"))
            )

        async def connect_channels() -> None:
            if self.stop_requested.is_set() and not ran_early:
                raise StopDuringBoot()  # the VM has not run: its saved state stays valid
            if checksum is not None and not await checksum:
                raise DriverError("the state file's contents changed since the save (checksum mismatch)")
            await self.guest_agent.connect(self.dir / filenames.QGA_SOCK)

        try:
            await self.driver.restore(
                saved.state,
                saved.mechanism,
                connect_channels,
                progress=events.ProgressEmitter(self.events, "restoring"),
                while_loading=lambda: self._apply_current_config(saved),
                launched=Launched(early.popen, early.state_fd, early.running, early.position) if early else None,
            )
        except DriverError as e:
            with contextlib.suppress(Exception):
                await self.driver.kill()
            if early is not None and early.ssh_master is not None:
                early.ssh_master.kill()
                await asyncio.to_thread(early.ssh_master.wait)
            await self.driver.close()
            self.guest_agent.close()
            self.driver = None
            raise RestoreFailed(str(e)) from None
        log.info("the saved state is loaded and the VM runs")
        self.restored = True
        deadline = t0 + int(boot["config"]["bootTimeout"])

        # The guest runs and writes to its disk from here on: the state no longer matches the disk and must never
        # be restored again (until it is gone, the disk's changed identity refuses it).  Deleting a large file
        # takes tens of milliseconds: beside the SSH handshake, not before it.
        discarded = self._discarded = asyncio.ensure_future(asyncio.to_thread(savedstate.discard, self.dir))

        async def before_ready() -> None:
            await self._set_guest_clock()
            await discarded

        await self._guest_up(
            t0,
            deadline,
            "restored",
            before_ready=asyncio.ensure_future(before_ready()),
            ssh_master=early.ssh_master if early else None,
        )

    async def _set_guest_clock(self) -> None:
        """The guest's clock stood still while it was saved: set it to the host's time."""
        while True:
            try:
                await self.guest_agent.set_time()
                return
            except GuestAgentError as e:
                log.info("setting the guest clock: %s; retrying", e)
                await asyncio.sleep(0.1)

    async def _guest_up(
        self,
        t0: float,
        deadline: float,
        verb: str,
        before_ready: Awaitable[None] | None = None,
        ssh_master: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Wait for SSH (through ``ssh_master`` if one was started) and ``before_ready``, set up port forwards,
        report ready."""
        await self._until(self.ssh.connect_master(ssh_master), deadline, "answer on SSH")
        log.info("the guest answers on SSH")
        if before_ready is not None:
            await self._until(before_ready, deadline, "answer its guest agent")
            log.info("the guest agent answers")
        degraded = ""
        if verb == "ready":
            if self.default_guest:
                degraded = await self._check_provisioning()
            else:
                degraded = await self._until(self._wait_for_cloud_init(), deadline, "finish cloud-init")
        self.ready = True
        self.boot_seconds = time.monotonic() - t0  # the whole wait, cloud-init's included
        message = f"{verb} in {self.boot_seconds:.1f} s"
        if degraded:
            message += f", but provisioning failed: {degraded}"
        self.degraded = degraded
        self.events.emit(
            events.READY,
            message,
            seconds=self.boot_seconds,
            guest=self.guest,
            degraded=degraded,
            restored=self.restored,
            sshPort=self.boot_record["sshPort"],
        )
        rules = [ports.Rule.from_record(rule) for rule in self.boot_record["config"]["portForwards"]]
        self.forwarder = PortForwarder(self.guest_agent, self.ssh, rules, self.events.emit)
        self._tasks.add(asyncio.create_task(self.forwarder.run()))

    def _prepare_guest_access(self, config: Config) -> tuple[int, str]:
        """Write this boot's cidata and ssh config; return the host port forwarded to SSH and the guest user."""
        from torpor.guest import cidata

        key, pubkey = guest_ssh.ensure_keypair(self.home)
        user = cidata.GuestUser.from_host()
        cidata.write(self.dir, self.name, user, pubkey, config.provision)
        port = config.ssh.localPort or guest_ssh.free_port(avoid=snapshots.held_ssh_ports(self.home))
        guest_ssh.write_config(self.dir, self.name, port, user.name, key)
        return port, user.name

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
        try:  # for the diagnosis: a VM that never ran, a guest spinning or halted, and where
            log.error("the guest did not %s in time: %s", what, await asyncio.wait_for(self.driver.where(), 5))
        except Exception as e:  # a TimeoutError says nothing by itself
            log.error("the guest did not %s in time; QEMU could not say where the VM is: %r", what, e)
        raise TorporError(
            f"the guest did not {what} within the boot timeout",
            hint=f"see {self.dir / filenames.SERIAL_LOG} for the guest console",
        )

    async def _wait_for_cloud_init(self) -> str:
        """In a cloud-init guest, wait until cloud-init has finished (users, runcmd...); return what failed."""
        script = (
            "command -v cloud-init >/dev/null || { echo status: none; exit 0; }; "
            "cloud-init status --wait >/dev/null 2>&1; cloud-init status --long"
        )
        code, out = await self.ssh.run(["sh", "-c", shlex.quote(script)], timeout=3600)
        status = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("status:")), "")
        log.info("cloud-init: %s", status or out)
        if status in ("done", "none", "disabled"):
            return ""
        return f"cloud-init finished with status {status or f'unknown (exit code {code})'}:\n{out}"

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

    async def _run_until_stopped(self) -> tuple[str, dict[str, Any]]:
        assert self.driver is not None
        exited = asyncio.ensure_future(self.driver.wait())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stop.cancel()
            return f"the guest shut down (QEMU exit code {exited.result()})", {}
        exited.cancel()
        return await self._stop_vm()

    async def _stop_vm(self) -> tuple[str, dict[str, Any]]:
        """Save the VM if the runtime saveOnStop says so (shutting down if that fails), else shut it down."""
        async with self._vm_busy:  # a snapshot being taken completes first
            return await self._stop_vm_now()

    async def _stop_vm_now(self) -> tuple[str, dict[str, Any]]:
        assert self.driver is not None
        self._end_guest_access()
        if not self.ready and not self.restored:
            if savedstate.present(self.dir):
                self.events.emit(events.STOPPING, "stop requested before the restored VM ran; stopping QEMU")
                await self.driver.kill()
                return "stopped before the restored VM ran; the saved state is kept", {"saved": True}
            self.events.emit(events.STOPPING, "stop requested during boot; stopping QEMU")
            await self.driver.kill()
            return "stopped during boot", {}
        # A restored VM is a booted guest even before it answers SSH again: it is saved or shut down like any.
        if self._discarded is not None:
            await self._discarded  # the state it was restored from goes before a new one is written
        fields: dict[str, Any] = {"saved": False}
        if self.save_on_stop:
            self.events.emit(events.STOPPING, "saving the VM state")
            try:
                manifest = await saving.save(
                    self.dir, self.driver, self.boot_record, events.ProgressEmitter(self.events, "saving")
                )
                size = manifest["state"]["allocated"]
                return (
                    f"saved the VM state ({size / 2**20:.0f} MiB in {manifest['saveSeconds']:.2f} s)",
                    {"saved": True, "stateSize": size, "saveSeconds": manifest["saveSeconds"]},
                )
            except saving.SaveFailed as e:
                log.error("%s", e)
                fields["saveFailed"] = str(e)
                if not e.vm_alive:
                    return f"{e}", fields
                self.events.emit(events.NOTICE, f"{e}; shutting the guest down instead")
        timeout = int(self.boot_record["config"]["shutdownTimeout"])
        self.events.emit(events.STOPPING, f"shutting down the guest (waiting up to {timeout} s)")
        outcome = await self.driver.stop(timeout)
        return outcome.detail, fields

    def _drop_unpaired_ram_file(self) -> None:
        """Instant mode: remove the guest RAM file unless a saved state pairs with it.

        After a shutdown it is of no use (a cold boot starts from fresh RAM), and removing it at once spares the
        host's disk the write-back of the guest's dirty pages (measured: a 1 GiB guest that had just written 300
        MiB of its RAM left 370 MiB dirty in the page cache after a shutdown) and frees its space now.
        """
        if savedstate.present(self.dir):
            return
        try:
            (self.dir / filenames.MEMORY_FILE).unlink()
        except FileNotFoundError:
            return
        log.info("removed the guest RAM file (no saved state pairs with it)")

    def _end_guest_access(self) -> None:
        for task in self._tasks:
            task.cancel()
        # The port forwards are the SSH master's listening sockets: they close with it (cancelling them one by one
        # first ran ssh once per forward, on a stop's critical path).
        self.forwarder = None
        self.ssh.end_master()

    async def _cleanup(self) -> None:
        self._end_guest_access()
        await asyncio.to_thread(self._drop_unpaired_ram_file)  # 22 ms for a file of 450 MiB of dirty pages here
        await self.ssh.stop_master()  # ended by a stop already, or now: reaped either way
        self.guest_agent.close()
        for w in self._channels:
            w.close()
        await self.api.close()
        if self.driver is not None:
            await self.driver.close()
        clear_runtime_files(self.dir, keep=OWN_PID_FILE)
        (self.dir / filenames.HA_PID).unlink(missing_ok=True)
        os.close(self._pid_fd)

    # -- API ------------------------------------------------------------------------------------------------
    async def _get_info(self, _req: Request) -> tuple[int, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "pid": os.getpid(),
            "ready": self.ready,
            "restored": self.restored,
            "startedAt": self.started_at,
            "bootSeconds": self.boot_seconds,
            "guest": self.guest,
            "degraded": self.degraded,
            "saveOnStop": self.save_on_stop,
            "forwards": sorted(str(f) for f in self.forwarder.active) if self.forwarder else [],
        }
        if self.driver is not None:
            info["vm"] = await self.driver.inspect()
        if self.boot_record:
            info["configDigest"] = self.boot_record.get("configDigest")
        return 200, info

    async def _get_driver_config(self, _req: Request) -> tuple[int, Any]:
        return 200, {"saveOnStop": self.save_on_stop}

    async def _post_snapshot(self, req: Request) -> tuple[int, Any]:
        """Take a snapshot of the running VM (disk, RAM, devices)."""
        tag = _tag_from(req)
        if self._vm_busy.locked() or self.stop_requested.is_set() or not self.ready or self.driver is None:
            raise HTTPError(409, "the VM is not running (or is busy stopping or snapshotting); try again")
        if snapshots.snapshot_dir(self.dir, tag).exists():
            raise HTTPError(409, f"snapshot {tag!r} exists; delete it first or choose another tag")
        async with self._vm_busy:
            self.events.emit(events.NOTICE, f"taking snapshot {tag!r}")
            try:
                meta = await snapshotting.create(
                    self.dir, self.driver, self.boot_record, tag, events.ProgressEmitter(self.events, "snapshot")
                )
            except (DriverError, OSError) as e:
                raise HTTPError(500, f"the snapshot failed: {e}") from None
        self.events.emit(events.NOTICE, f"snapshot {tag!r} taken (VM paused {meta['pausedSeconds']:.2f} s)")
        keys = ("tag", "createdAt", "mechanism", "pausedSeconds", "seconds", "state", "ram")
        return 200, {k: meta[k] for k in keys if k in meta}

    async def _delete_snapshot(self, req: Request) -> tuple[int, Any]:
        """Delete a snapshot while the VM runs: QEMU holds the disk, so it deletes the disk's part."""
        tag = _tag_from(req)
        if self.driver is None or self.stop_requested.is_set():
            raise HTTPError(409, "the VM is not running")
        async with self._vm_busy:
            with contextlib.suppress(QMPCommandError):  # a disk without it (an interrupted snapshot)
                await self.driver.delete_snapshot(tag)
            await asyncio.to_thread(snapshots.remove, self.dir, tag)
        return 200, {"tag": tag, "deleted": True}

    async def _patch_driver_config(self, req: Request) -> tuple[int, Any]:
        body = req.json()
        if not isinstance(body, dict):
            raise HTTPError(400, 'expected a JSON object such as {"saveOnStop": true}')
        unknown = sorted(set(body) - {"saveOnStop"})
        if unknown:
            raise HTTPError(400, f"unknown field(s) {', '.join(unknown)}; the only runtime setting is saveOnStop")
        if "saveOnStop" in body:
            value = body["saveOnStop"]
            if not isinstance(value, bool):
                raise HTTPError(400, f"saveOnStop must be true or false, not {json.dumps(value)}")
            if value and self.driver is not None and not self.driver.features.save_restore:
                raise HTTPError(400, "this instance's driver cannot save the machine state")
            self.save_on_stop = value
            log.info("runtime saveOnStop set to %s", value)
        return 200, {"saveOnStop": self.save_on_stop}


def _tag_from(req: Request) -> str:
    body = req.json()
    if not isinstance(body, dict) or set(body) != {"tag"} or not isinstance(body["tag"], str):
        raise HTTPError(400, 'expected a JSON object such as {"tag": "clean"}')
    try:
        return snapshots.validate_tag(body["tag"])
    except InstanceStateError as e:
        raise HTTPError(400, str(e)) from None


def parse_ready(line: str) -> dict[str, str]:
    """The ``key=value`` fields of the guest's ready report (``ready uptime=3.1 boots=2``)."""
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def main(name: str, inst_dir: Path, home: Path, early: Early) -> int:
    """Run the host agent after :func:`torpor.hostagent.early.begin`: events on stdout, log on stderr."""
    agent = HostAgent(name, inst_dir, home, early)
    return asyncio.run(agent.run())
