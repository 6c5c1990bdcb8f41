"""How the host agent brings the VM up: a restore of the saved state if there is a usable one, else a cold boot;
then the wait until the guest is ready (SSH, its clock, provisioning or cloud-init) and the port forwards.

A state that cannot be restored is set aside (``saved.failed-*``) with the reason, and the agent cold boots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from torpor.config import sources
from torpor.driver.values import BootPlan
from torpor.errors import ConfigError, DriverError
from torpor.hostagent import events, mounts, sockets
from torpor.hostagent.state import State, StopDuringBoot
from torpor.store import atomic, filenames, savedstate
from torpor.store.instance import read_instance_yaml

if TYPE_CHECKING:
    import subprocess

    from torpor.config.layering import Effective
    from torpor.hostagent.agent import HostAgent
    from torpor.hostagent.early import EarlyRestore
    from torpor.store.records import BootFile

log = logging.getLogger(__name__)


class RestoreFailed(Exception):
    """The VM could not resume from the saved state; the agent cold boots instead."""


async def start(agent: HostAgent) -> None:
    """Restore the saved state if there is a usable one, else (or if the restore fails) cold boot."""
    early = agent.early.restore
    saved = early.saved if early is not None else await _usable_saved_state(agent)
    if saved is not None:
        try:
            await _restore(agent, saved, early)
            return
        except RestoreFailed as e:
            aside = savedstate.set_aside(agent.dir)
            agent.events.emit(
                events.NOTICE,
                f"could not restore the saved state: {e}; it was kept in {aside.name if aside else '?'}; cold booting",
            )
    await _cold_boot(agent, _load_config(agent))


def _load_config(agent: HostAgent) -> Effective:
    from torpor.config.layering import load_effective

    return load_effective(agent.home, read_instance_yaml(agent.dir), str(agent.dir / filenames.INSTANCE_YAML))


async def _usable_saved_state(agent: HostAgent) -> savedstate.Saved | None:
    """The saved state if one exists and may be restored; anything unusable is set aside with a notice.
    (The state's digest, where it must be verified, is verified during the load.)"""
    try:
        saved = savedstate.load(agent.dir)
        if saved is None:
            return None
        problems = await asyncio.to_thread(agent.factory.restore_problems, saved, agent.dir)
    except savedstate.Unusable as e:
        problems = [str(e)]
    if not problems:
        return saved
    aside = savedstate.set_aside(agent.dir)
    agent.events.emit(
        events.NOTICE,
        f"not restoring the saved state: {'; '.join(problems)}; it was kept in {aside.name if aside else '?'}; "
        "cold booting",
    )
    return None


async def _cold_boot(agent: HostAgent, effective: Effective) -> None:
    # (a restore does without these: urllib, the image builder: 20 ms on its path)
    from torpor.config.schema import format_size
    from torpor.driver.qemu.factory import grow_disk
    from torpor.guest import images
    from torpor.store import disks

    config = effective.config
    agent.save_on_stop = config.saveOnStop
    config_json = config.model_dump(mode="json")
    await asyncio.to_thread(mounts.check_locations, config_json)  # before anything starts (a stat each)
    await asyncio.to_thread(sockets.check, sockets.from_config(agent.dir, config_json))
    image = config.image_for_arch()
    default_guest = image.location == images.DEFAULT_GUEST
    if default_guest and config.upgradePackages:
        agent.events.emit(events.NOTICE, "upgradePackages: the default guest has no package manager; nothing to do")
    names = [d.name for d in config.additionalDisks]
    data_disks = tuple(await asyncio.to_thread(disks.check_for_boot, agent.home, agent.name, names))
    ssh_port, user = await asyncio.to_thread(agent.guest.prepare_boot, config)
    if (was := await asyncio.to_thread(grow_disk, agent.dir, config.disk)) is not None:
        agent.events.emit(
            events.NOTICE, f"disk grown from {format_size(was)} to {format_size(config.disk)}; the guest grows its root"
        )
    # A cold boot starts from fresh RAM; a RAM file left by an earlier (instant mode) run goes.
    (agent.dir / filenames.MEMORY_FILE).unlink(missing_ok=True)
    plan = BootPlan(config_json, images.kernel_cmdline(image), ssh_port, default_guest, data_disks)
    driver = agent.driver = await asyncio.to_thread(agent.factory.boot, agent.dir, agent.name, plan)
    if driver.accel.name != "kvm":
        agent.events.emit(events.NOTICE, f"using TCG software emulation (slower): {driver.accel.reason}")
    # Everything a restore of this boot needs, whatever happens to the instance's YAML meanwhile.
    agent.boot_record = {
        "config": config_json,
        "configDigest": effective.digest(),
        "configSources": effective.sources,
        "sshPort": ssh_port,
        "user": user,
        "defaultGuest": default_guest,
        "accel": driver.accel.name,
    }
    agent.state = State.BOOTING
    t0 = time.monotonic()
    agent.events.emit(events.BOOTING, f"booting ({_what(agent)})")

    async def before_run() -> None:
        await agent.guest.connect_channels(default_guest)
        await agent.guest.attach_mounts(config_json["mounts"], config_json["mountType"], None, (), driver)

    await driver.start(before_run)
    record: BootFile = {**agent.boot_record, "argv": driver.machine_record()["argv"]}
    atomic.write_text(agent.dir / filenames.BOOT_RECORD, json.dumps(record))
    deadline = t0 + config.bootTimeout
    if default_guest:
        agent.reported = await agent.until(agent.guest.ready_report(), deadline, "report ready")
    await _guest_up(agent, t0, deadline, "ready", service=images.READY_COMMAND.get(image.location or ""))


def _what(agent: HostAgent) -> str:
    assert agent.driver is not None
    record = agent.driver.machine_record()
    return f"QEMU {record['qemu']['version']}, {agent.driver.accel.name}"


async def _restore(agent: HostAgent, saved: savedstate.Saved, early: EarlyRestore | None) -> None:
    boot = agent.boot_record = saved.manifest["boot"]
    agent.state = State.RESUMING if early is not None and early.running else State.RESTORING
    driver = agent.driver = agent.factory.restore(agent.dir, agent.name, saved, early.launch if early else None)
    if early is None:  # else the early path did these
        await asyncio.to_thread(agent.guest.write_ssh_config, boot["sshPort"], boot["user"])
        agent.events.emit(events.BOOTING, restoring_message(saved), restoring=True)
    t0 = time.monotonic()
    checksum = _checksum_unless_untouched(saved, ran_early=agent.state is State.RESUMING)

    async def before_run() -> None:
        if agent.stop_requested.is_set() and agent.state is State.RESTORING:
            raise StopDuringBoot()  # the VM has not run: its saved state stays valid
        if checksum is not None and not await checksum:
            raise DriverError("the state file's contents changed since the save (checksum mismatch)")
        await agent.guest.connect_channels(False)
        channels = early.launch.channels if early is not None else ()
        config = boot["config"]
        kept = saved.manifest["mounts"]
        await agent.guest.attach_mounts(config["mounts"], config["mountType"], kept, channels, driver)

    try:
        await driver.restore(
            before_run,
            progress=events.ProgressEmitter(agent.events, "restoring"),
            while_loading=lambda: _apply_current_config(agent, saved),
        )
    except DriverError as e:
        await _abandon(agent, early)
        raise RestoreFailed(str(e)) from None
    log.info("the saved state is loaded and the VM runs")
    agent.state = State.RESUMING
    agent.restored = True
    # The guest runs and writes to its disk from here on: the state no longer matches the disk and must never be
    # restored again (until it is gone, the disk's changed identity refuses it).  Deleting a large file takes
    # tens of milliseconds: beside the SSH handshake, not before it.
    agent.discarded = asyncio.ensure_future(asyncio.to_thread(_restored_files, agent, saved))

    async def settle() -> None:  # beside the wait for SSH
        await agent.guest.set_clock()
        await agent.guest.mounts.ready()  # the mounts' sessions
        await agent.guest.mounts.mount_again()  # 9p and virtiofs mounts, unmounted for the save
        assert agent.discarded is not None
        await agent.discarded

    deadline = t0 + int(boot["config"]["bootTimeout"])
    master = early.ssh_master if early else None
    await _guest_up(agent, t0, deadline, "restored", before_ready=asyncio.ensure_future(settle()), ssh_master=master)


def _restored_files(agent: HostAgent, saved: savedstate.Saved) -> None:
    """Once a restored VM runs: its state goes, and the boot record names the boot it resumed (a snapshot's can
    be an earlier boot than the last cold boot's)."""
    savedstate.discard(agent.dir)
    record: BootFile = {**saved.manifest["boot"], "argv": saved.manifest["argv"]}
    atomic.write_text(agent.dir / filenames.BOOT_RECORD, json.dumps(record))


def restoring_message(saved: savedstate.Saved) -> str:
    return f"restoring the saved state ({saved.size / 2**20:.0f} MiB, saved {time.time() - saved.created:.0f} s ago)"


def _checksum_unless_untouched(saved: savedstate.Saved, ran_early: bool) -> asyncio.Future[bool] | None:
    """A state file touched since the save has its digest verified while QEMU loads it, before the VM may run.
    (The early path lets the VM run only if it was not touched.)"""
    if ran_early or savedstate.state_unchanged(saved):
        return None
    log.info("the state file changed since the save (its change time says so): verifying its digest")
    digest = saved.manifest["state"].get("digest")
    return asyncio.ensure_future(asyncio.to_thread(savedstate.digest_matches, saved.state, digest))


async def _abandon(agent: HostAgent, early: EarlyRestore | None) -> None:
    """After a failed restore: the VM and what the early path started are gone before the cold boot."""
    assert agent.driver is not None
    try:
        await agent.driver.kill()
    except Exception as e:
        log.warning("ending the VM of the failed restore: %s", e)
    if early is not None and early.ssh_master is not None:
        early.ssh_master.kill()
        await asyncio.to_thread(early.ssh_master.wait)
    await agent.driver.close()
    await agent.guest.close()  # the cold boot connects again
    agent.driver = None


def _apply_current_config(agent: HostAgent, saved: savedstate.Saved) -> None:
    """While a restore loads: the runtime saveOnStop from the instance file, and a word on edits made to it.

    The restored VM keeps the configuration it was booted with; an edited (even invalid) instance file only
    takes effect at the next cold boot.  Files unchanged since the boot need no validating.
    """
    boot_config = saved.manifest["config"]
    if sources.unchanged_since(saved.manifest["boot"]["configSources"], agent.home, agent.dir):
        log.info("the configuration files are unchanged since the boot: not validating them again")
        agent.save_on_stop = bool(boot_config["saveOnStop"])
        return
    try:
        effective = _load_config(agent)
    except ConfigError as e:
        agent.save_on_stop = bool(boot_config["saveOnStop"])
        agent.events.emit(events.NOTICE, f"{e}\nrestoring with the configuration the VM was saved with")
        return
    agent.save_on_stop = effective.config.saveOnStop
    if saved.manifest["configDigest"] != effective.digest():
        changed = savedstate.changed_fields(boot_config, effective.config.model_dump(mode="json"))
        agent.events.emit(
            events.NOTICE,
            f"the configuration changed since the save ({', '.join(changed)}); restoring with the configuration "
            f"the VM was booted with; `torpor restart {agent.name}` applies the changes",
            changed=changed,
        )


async def _guest_up(
    agent: HostAgent,
    t0: float,
    deadline: float,
    verb: str,
    *,
    before_ready: Awaitable[None] | None = None,
    ssh_master: subprocess.Popen[bytes] | None = None,
    service: str | None = None,
) -> None:
    """Wait for SSH (through ``ssh_master`` if one was started) and ``before_ready``, check provisioning (and
    at a cold boot, the image's ``service`` command), report ready and start the port forwards."""
    assert agent.boot_record is not None
    await agent.until(agent.guest.ssh_up(ssh_master), deadline, "answer on SSH")
    log.info("the guest answers on SSH")
    if before_ready is not None:
        await agent.until(before_ready, deadline, "answer its guest agent")
        log.info("the guest agent answers")
    degraded = ""
    config = agent.boot_record["config"]
    if verb == "ready":
        if agent.boot_record["defaultGuest"]:
            degraded = await agent.guest.provisioning(agent.reported.get("provision", "none"))
        else:
            degraded = await agent.until(agent.guest.cloud_init(), deadline, "finish cloud-init")
            if not degraded and service is not None:
                degraded = await agent.until(agent.guest.service_ready(service), deadline, "start its service")
        # (a restored guest is as it was when its probes passed)
        if not degraded and config.get("probes"):
            probes = agent.guest.probes(config["probes"], config.get("param", {}))
            degraded = await agent.until(probes, deadline, "pass its readiness probes")
    if lost := agent.guest.mounts.lost:
        agent.events.emit(events.NOTICE, "the restore could not keep: " + "; ".join(lost))
    if config.get("copyToHost"):
        await agent.until(agent.guest.copy_to_host(config["copyToHost"], agent.events.emit), deadline, "copy files")
    if forwards := sockets.from_config(agent.dir, config):
        if agent.boot_record["defaultGuest"]:
            agent.events.emit(
                events.NOTICE,
                "not forwarding unix sockets: the default guest's SSH server (dropbear) cannot forward them "
                "(template:debian's OpenSSH does)",
            )
        else:
            await agent.guest.forward_sockets(forwards, agent.events.emit)
    agent.state = State.READY
    agent.boot_seconds = time.monotonic() - t0  # the whole wait, cloud-init's included
    agent.degraded = degraded
    message = f"{verb} in {agent.boot_seconds:.1f} s" + (f", but provisioning failed: {degraded}" if degraded else "")
    # (Lima's `message`, expanded when the configuration was read, is shown by start once ready)
    agent.events.emit(
        events.READY,
        message,
        seconds=agent.boot_seconds,
        guest=agent.reported,
        degraded=degraded,
        restored=agent.restored,
        sshPort=agent.boot_record["sshPort"],
        startMessage=config.get("message", ""),
    )
    agent.guest.forward_ports(config["portForwards"], agent.events.emit)
