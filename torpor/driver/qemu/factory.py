"""Making QEMU drivers: the one door into ``driver/qemu/`` for the host agent and the CLI.

The QEMU binary is resolved here, from the configuration's ``arch`` (a cold boot) or the saved record's (a
restore), and nowhere else.  This module's own imports are light: the host agent's early restore path uses it
before asyncio and qemu.qmp are imported, and those come in only with the driver itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor import subp
from torpor.config.machine import Machine
from torpor.driver.qemu import early, firmware, host, mechanisms
from torpor.driver.qemu.early import EarlyLaunch
from torpor.driver.values import Accel, BootPlan
from torpor.store import filenames, savedstate
from torpor.store.cache import cache_root

if TYPE_CHECKING:
    from torpor.driver.qemu.cmdline import HostForward, NinePExport, VirtiofsShare
    from torpor.driver.qemu.driver import QemuDriver

__all__ = ["EarlyLaunch", "QemuFactory", "create_disk", "early_restore", "find_qemu"]


def find_qemu(arch: str) -> host.Qemu:
    """The QEMU system emulator for ``arch`` ($TORPOR_QEMU, else from PATH), its version cached."""
    return host.find_qemu(arch, cache_root())


class QemuFactory:
    """The host agent's drivers (driver.base.Factory)."""

    def boot(self, inst_dir: Path, name: str, plan: BootPlan) -> QemuDriver:
        from dataclasses import replace

        from torpor.driver.qemu import cmdline
        from torpor.driver.qemu.driver import QemuDriver, vm_spec

        machine = Machine.of(plan.config)
        qemu = find_qemu(machine.arch)
        kernel = inst_dir / filenames.KERNEL
        accel = host.probe_accel(qemu, kernel if kernel.exists() else None, cache_root(), machine.arch)
        uefi = None
        if not kernel.exists():  # a disk image, booted by its firmware
            fw = firmware.prepare(inst_dir, firmware.choose(plan.config, inst_dir / filenames.DISK), machine.arch)
            uefi = fw.files
        spec = replace(
            vm_spec(inst_dir, name, machine, accel, plan.kernel_cmdline),
            ready_socket=inst_dir / filenames.READY_SOCK if plan.ready_channel else None,
            cidata=inst_dir / filenames.CIDATA,
            qga_socket=inst_dir / filenames.QGA_SOCK,
            forwards=(cmdline.HostForward("127.0.0.1", plan.ssh_port, 22), *udp_forwards(plan.config)),
            mount_sockets=_mount_sockets(inst_dir, plan.config),
            ninep=_ninep_exports(plan.config),
            virtiofs=_virtiofs_shares(inst_dir, plan.config),
            data_disks=plan.data_disks,
            cpu_model=plan.config.get("vmOpts", {}).get("qemu", {}).get("cpuType", {}).get(machine.arch),
            uefi=uefi,
        )
        _check_minimum_version(qemu, plan.config)
        return QemuDriver(qemu, spec, accel)

    def restore(self, inst_dir: Path, name: str, saved: savedstate.Saved, early: object | None) -> QemuDriver:
        from dataclasses import replace

        from torpor.driver.qemu.driver import Incoming, Launched, QemuDriver, vm_spec

        boot = saved.manifest["boot"]
        accel = Accel(boot["accel"], "as at the boot that was saved")
        machine = Machine.of(boot["config"])
        qemu = early.qemu if isinstance(early, EarlyLaunch) else find_qemu(machine.arch)
        launched = None
        if isinstance(early, EarlyLaunch):
            launched = Launched(early.popen, early.state_fd, early.running, early.position)
        incoming = Incoming(saved.state, saved.mechanism, launched)
        spec = replace(
            vm_spec(inst_dir, name, machine, accel, ""),
            virtiofs=_virtiofs_shares(inst_dir, boot["config"]),
            uefi=firmware.pinned_files(saved.manifest.get("firmware"), inst_dir),
        )
        return QemuDriver(qemu, spec, accel, argv=saved.manifest["argv"], incoming=incoming)

    def restore_problems(self, saved: savedstate.Saved, inst_dir: Path) -> list[str]:
        qemu = find_qemu(Machine.of(saved.manifest["config"]).arch)
        return _problems(saved, inst_dir, qemu)


def _check_minimum_version(qemu: host.Qemu, config: dict[str, Any]) -> None:
    """vmOpts.qemu.minimumVersion: refuse an older QEMU, as Lima does."""
    wanted = config.get("vmOpts", {}).get("qemu", {}).get("minimumVersion")
    if not wanted:
        return

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")) + (0,) * (3 - len(v.split(".")))

    if key(qemu.version) < key(wanted):
        from torpor.errors import ConfigError

        raise ConfigError(
            f"vmOpts.qemu.minimumVersion: this instance needs QEMU {wanted}; {qemu.binary} is {qemu.version}",
            hint="install a newer QEMU, or set $TORPOR_QEMU to one",
        )


def udp_forwards(config: dict[str, Any]) -> list[HostForward]:
    """The ``proto: udp`` port forwards, which QEMU's user network forwards from the boot on (TCP ones follow the
    guest's listening sockets over SSH instead)."""
    from torpor.driver.qemu import cmdline

    out = []
    for rule in config["portForwards"]:
        if rule.get("proto") != "udp" or rule.get("ignore"):
            continue
        low, high = rule["guestPortRange"] or (rule["guestPort"], rule["guestPort"])
        host_low = (rule.get("hostPortRange") or [rule["hostPort"] or low])[0]
        out += [cmdline.HostForward(rule["hostIP"], host_low + p - low, p, "udp") for p in range(low, high + 1)]
    return out


def _mount_sockets(inst_dir: Path, config: dict[str, Any]) -> tuple[Path, ...]:
    if config["mountType"] != "reverse-sshfs":
        return ()
    return tuple(inst_dir / filenames.mount_sock(i) for i in range(len(config["mounts"])))


def _ninep_exports(config: dict[str, Any]) -> tuple[NinePExport, ...]:
    from torpor.driver.qemu.cmdline import NinePExport

    if config["mountType"] != "9p":
        return ()
    return tuple(
        NinePExport(Path(m["location"]), not m["writable"], m["nineP"]["securityModel"]) for m in config["mounts"]
    )


def _virtiofs_shares(inst_dir: Path, config: dict[str, Any]) -> tuple[VirtiofsShare, ...]:
    from torpor.driver.qemu.cmdline import VirtiofsShare

    if config["mountType"] != "virtiofs":
        return ()
    return tuple(
        VirtiofsShare(Path(m["location"]), inst_dir / filenames.virtiofs_sock(i), inst_dir / filenames.virtiofs_log(i))
        for i, m in enumerate(config["mounts"])
    )


def _problems(saved: savedstate.Saved, inst_dir: Path, qemu: host.Qemu) -> list[str]:
    if saved.mechanism not in mechanisms.ALL:
        return [f"it was saved with a mechanism this torpor does not know ({saved.mechanism})"]
    return [
        *savedstate.problems(saved, inst_dir, qemu.version, verify_state=False),
        *firmware.problems(saved.manifest.get("firmware"), inst_dir),
    ]


def early_restore(
    inst_dir: Path,
    saved: savedstate.Saved,
    *,
    meanwhile: Callable[[], None],
    progress: Callable[[int, int], None],
    stop_asked: Callable[[], bool],
) -> EarlyLaunch | None:
    """QEMU started loading ``saved`` (see driver/qemu/early.py), or None if it cannot be restored as it is:
    the agent proper then repeats the checks, says why, and cold boots."""
    qemu = find_qemu(Machine.of(saved.manifest["config"]).arch)
    if _problems(saved, inst_dir, qemu):
        return None
    return early.launch(inst_dir, saved, qemu, meanwhile=meanwhile, progress=progress, stop_asked=stop_asked)


def grow_disk(inst_dir: Path, size: int) -> int | None:
    """Grow the instance's disk to ``size`` bytes if it is smaller (the guest grows its root filesystem at boot);
    the size it had, or None if unchanged.  A smaller ``size`` is refused: the guest's filesystem fills the disk.
    Only between boots: a saved state holds the disk as it was saved."""
    import json

    from torpor.config.schema import format_size
    from torpor.errors import ConfigError

    disk = inst_dir / filenames.DISK
    if not disk.exists():
        return None
    current = int(json.loads(subp.run(["qemu-img", "info", "-U", "--output=json", disk]).stdout)["virtual-size"])
    if size == current:
        return None
    if size < current:
        raise ConfigError(
            f"disk: {format_size(size)} is smaller than the instance's disk ({format_size(current)}); a disk is "
            "never shrunk (the guest's filesystem spans it)",
            hint=f"set disk: back to {format_size(current)} or more (`torpor edit {inst_dir.name}`)",
        )
    subp.run(["qemu-img", "resize", "-q", disk, str(size)])
    return current


def create_disk(inst_dir: Path, size: int, base: Path | None) -> None:
    """Create the instance's disk (qcow2, over ``base`` when given) unless it exists."""
    disk = inst_dir / filenames.DISK
    if disk.exists():
        return
    tmp = disk.with_name(f".{disk.name}.tmp")
    argv: list[str] = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if base is not None:
        info = subp.run(["qemu-img", "info", "--output=json", base]).stdout
        fmt = "qcow2" if '"format": "qcow2"' in info else "raw"
        argv += ["-b", str(base), "-F", fmt]
    argv += [str(tmp), str(size)]
    subp.run(argv)
    tmp.rename(disk)
