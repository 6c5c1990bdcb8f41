"""Clone an instance that is not running into a new one (Lima's `limactl clone`).

A stopped instance's clone is a new machine with the same disk: it gets its own instance-id, so cloud-init in the
guest treats its first boot as a new instance's, and its own name and SSH port.  A saved instance's clone also
gets a copy of the saved state, and its first start restores that running machine as it was saved (a fork): its
processes are the source's, and so are its hostname and identity inside the guest until it first cold boots.
Snapshots are not cloned (the copy of the disk drops their disk parts).  The clone is built under a temporary
name and renamed into place: a failure leaves no half instance.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from torpor import subp
from torpor.driver.qemu import cmdline, disksnap, mechanisms
from torpor.errors import InstanceExists, InstanceStateError, TorporError
from torpor.guest import ssh
from torpor.store import atomic, filenames, lock, savedstate, snapshots
from torpor.store.instance import Status, home, inspect, instance_dir, validate_name

Report = Callable[[str], None]

# Files that are the instance's own and read-only once made: linked, not copied, where the filesystem allows.
SHARED_FILES = (filenames.KERNEL, filenames.INITRD, filenames.BASE_DISK)


def clone(src: str, dst: str, report: Report, root: Path | None = None, dst_root: Path | None = None) -> Path:
    """Clone instance ``src`` to ``dst`` (under ``dst_root``, default the same $TORPOR_HOME); return its directory."""
    root = root or home()
    dst_root = dst_root or root
    dst = validate_name(dst)
    target = instance_dir(dst, dst_root)
    if target.exists():
        raise InstanceExists(f"instance {dst!r} already exists", hint="choose another name, or delete it first")
    source = inspect(src, root)
    with lock.exclusive(source.dir / filenames.LOCK, f"instance {src!r}"):
        source = inspect(src, root)
        if source.status in (Status.RUNNING, Status.BROKEN):
            raise InstanceStateError(
                f"instance {src!r} is {source.status.value.lower()}; only a stopped or saved instance can be cloned",
                hint=f"`torpor stop {src}` (or `torpor stop --save {src}`, to clone its running state), then again",
            )
        from torpor.store import disks

        if held := disks.held_by(source.dir):
            raise InstanceStateError(
                f"instance {src!r} is saved with additional disks ({', '.join(sorted(held))}), which belong to one "
                "machine at a time: its clone could not resume",
                hint=f"`torpor start {src}` and `torpor stop --no-save {src}`, then clone the stopped instance",
            )
        saved = _usable_saved_state(source.dir, target, report)
        tmp = dst_root / f".{dst}.cloning.{os.getpid()}"
        try:
            tmp.mkdir(parents=True)
            _copy_files(source.dir, tmp)
            if (source.dir / filenames.DISK).exists():
                _copy_disk(source.dir, tmp, target, report)
            if saved is not None:
                _copy_saved_state(saved, source.dir, tmp, target, dst_root)
            tmp.rename(target)
        except OSError as e:
            raise TorporError(f"cloning {src!r} to {dst!r} failed: {e}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    atomic.fsync_dir(dst_root)
    return target


def _usable_saved_state(inst_dir: Path, target: Path, report: Report) -> savedstate.Saved | None:
    try:
        saved = savedstate.load(inst_dir)
    except savedstate.Unusable as e:
        report(f"not cloning the saved state: {e}; the clone cold boots")
        return None
    if saved is not None and "," in str(target) and saved.mechanism == mechanisms.MAPPED_RAM:
        # QEMU reads a mapped-ram state through a file: URI, whose options follow a comma.
        report(
            f"not cloning the saved state: QEMU cannot read its kind ({saved.mechanism}) from {target}, a path "
            "with a comma; the clone cold boots"
        )
        return None
    return saved


def _copy_files(src: Path, dst: Path) -> None:
    atomic.write_text(dst / filenames.INSTANCE_YAML, (src / filenames.INSTANCE_YAML).read_text())
    for name in SHARED_FILES:
        if (src / name).exists():
            try:
                os.link(src / name, dst / name)
            except OSError:
                shutil.copyfile(src / name, dst / name)
    if (src / filenames.EFI_VARS).exists():  # a UEFI guest's variables: its own, the guest writes them
        _copy(src / filenames.EFI_VARS, dst / filenames.EFI_VARS)


def _copy_disk(src: Path, tmp: Path, target: Path, report: Report) -> None:
    disk = tmp / filenames.DISK
    _copy(src / filenames.DISK, disk)
    rebase(disk, target)  # (the clone's directory, once it is in place)
    tags = sorted(disksnap.names(disk))
    for tag in tags:
        disksnap.delete(disk, tag)
    if tags:
        report(f"snapshots are not cloned (left out: {', '.join(tags)})")


def rebase(disk: Path, inst_dir: Path) -> None:
    """Point ``disk``'s backing file, if it has one, at the base image in ``inst_dir``: a disk reads its base
    from the instance directory it belongs to."""
    info = json.loads(subp.run(["qemu-img", "info", "--output=json", disk]).stdout)
    if info.get("backing-filename"):
        base_format = info.get("backing-filename-format", "raw")
        subp.run(["qemu-img", "rebase", "-u", "-F", base_format, "-b", inst_dir / filenames.BASE_DISK, disk])


def _copy_saved_state(saved: savedstate.Saved, src: Path, tmp: Path, target: Path, dst_root: Path) -> None:
    """The saved state, its boot's seed and (instant mode) RAM file, with a manifest for the clone."""
    (tmp / filenames.SAVED_DIR).mkdir(mode=0o700)
    _copy(saved.state, tmp / filenames.SAVED_DIR / filenames.STATE_FILE)
    _copy(src / filenames.CIDATA, tmp / filenames.CIDATA)
    manifest = saved.manifest.copy()
    if manifest["ramFile"] is not None:
        _copy(src / filenames.MEMORY_FILE, tmp / filenames.MEMORY_FILE)
        manifest["ramFile"] = savedstate.file_identity(tmp / filenames.MEMORY_FILE)
    boot = manifest["boot"].copy()
    port = ssh.free_port(avoid=snapshots.held_ssh_ports(dst_root))
    old = cmdline.Placement(src, src.name, cmdline.HostForward("127.0.0.1", boot["sshPort"], 22))
    new = cmdline.Placement(target, target.name, cmdline.HostForward("127.0.0.1", port, 22))
    manifest["argv"] = cmdline.retarget(manifest["argv"], old, new)
    boot["sshPort"] = port
    manifest["boot"] = boot
    # The disk is the copy just made, of the disk the state matches.  The state file's recorded identity stays
    # the source's: the clone's first restore verifies its digest before the VM runs.
    manifest["disk"] = savedstate.file_identity(tmp / filenames.DISK)
    savedstate.write_manifest(tmp, manifest)


def _copy(src: Path, dst: Path) -> None:
    """A sparse copy with the source's mode (saved states and the seed are the user's only)."""
    savedstate.sparse_copy(src, dst)
    shutil.copymode(src, dst)
