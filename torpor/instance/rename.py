"""Rename a stopped or saved instance in place.  Its files carry their own directory in places: the disk's
backing file (an image's copy beside it) and, for a saved state or a memory snapshot, QEMU's recorded command
line; each is moved to the new directory, so that a saved state still restores and snapshots still apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torpor.driver.qemu import cmdline
from torpor.errors import InstanceExists, InstanceStateError
from torpor.instance.clone import rebase
from torpor.store import atomic, filenames, lock, savedstate, snapshots
from torpor.store.instance import Status, home, inspect, instance_dir, validate_name


def rename(old: str, new: str, root: Path | None = None) -> Path:
    root = root or home()
    new = validate_name(new)
    target = instance_dir(new, root)
    if target.exists():
        raise InstanceExists(f"instance {new!r} already exists", hint="choose another name")
    inst = inspect(old, root)
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {old!r}"):
        inst = inspect(old, root)
        if inst.status not in (Status.STOPPED, Status.SAVED):
            raise InstanceStateError(
                f"instance {old!r} is {inst.status.value.lower()}; only a stopped or saved instance can be renamed",
                hint=f"`torpor stop {old}` (`--save` keeps its running state) first",
            )
        try:
            saved = savedstate.load(inst.dir)
        except savedstate.Unusable:
            saved = None  # (moved as it is; the next start says why it cannot be restored)
        inst.dir.rename(target)  # (the lock, a file in it, moves along, held)
        atomic.fsync_dir(root)
        _move_records(inst.dir, old, target, new, saved)
    return target


def _move_records(src: Path, old: str, target: Path, new: str, saved: savedstate.Saved | None) -> None:
    """The disk's backing file, a saved state's command line and memory snapshots' moved to ``target``."""
    disk = target / filenames.DISK
    if disk.exists():
        rebase(disk, target)

    def moved(argv: list[str], ssh_port: int) -> list[str]:
        ssh = cmdline.HostForward("127.0.0.1", ssh_port, 22)
        return cmdline.retarget(argv, cmdline.Placement(src, old, ssh), cmdline.Placement(target, new, ssh))

    if saved is not None:
        manifest: dict[str, Any] = dict(saved.manifest)
        manifest["argv"] = moved(manifest["argv"], manifest["boot"]["sshPort"])
        manifest["disk"] = savedstate.file_identity(disk)  # (the rebase rewrote its header)
        savedstate.write_manifest(target, manifest)
    for snap in snapshots.list_all(target)[0]:
        if snap.has_memory and "argv" in snap.meta:
            meta = {k: v for k, v in snap.meta.items() if k != snapshots.META_DIGEST}
            meta["argv"] = moved(meta["argv"], meta["boot"]["sshPort"])
            snapshots.write_meta(snap.dir, meta)
