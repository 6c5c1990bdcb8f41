"""Snapshots from the CLI's side: create, apply, list and delete, whatever state the instance is in.

A running instance's host agent takes and deletes snapshots (QEMU holds the disk); for a stopped one torpor edits
the disk itself with ``qemu-img``.  Applying a snapshot goes through the restore path: the disk is reverted, the
snapshot's memory state is put in place as a saved state, and ``start`` restores it (clock, SSH, port forwards,
guest agent as after any restore).  Everything that can be checked is checked before anything is changed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.config import machine
from torpor.driver.qemu import disksnap, firmware
from torpor.driver.qemu.mechanisms import SHARED_RAM
from torpor.errors import InstanceStateError, TorporError
from torpor.hostagent.client import HostAgentClient
from torpor.store import atomic, filenames, lock, records, savedstate, snapshots
from torpor.store.instance import Instance, Status, home, inspect, read_instance_yaml

Report = Callable[[str], None]
Confirm = Callable[[str], bool]

SNAPSHOT_TIMEOUT = 3600.0  # a large guest's RAM under a slow disk


def _agent(inst: Instance) -> HostAgentClient:
    return HostAgentClient(inst.dir / filenames.HA_SOCK, timeout=SNAPSHOT_TIMEOUT)


def _refuse_broken(inst: Instance) -> None:
    if inst.status is Status.BROKEN:
        raise InstanceStateError(
            f"instance {inst.name!r} is broken: {inst.reason}",
            hint=f"`torpor stop --force {inst.name}` cleans up; then try again",
        )


def create(name: str, tag: str, report: Report, root: Path | None = None) -> dict[str, Any]:
    """Take snapshot ``tag`` of ``name``: disk, RAM and devices if it runs (or is saved), else its disk."""
    snapshots.validate_tag(tag)
    inst = inspect(name, root or home())
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {name!r}"):
        inst = inspect(name, root or home())
        _refuse_broken(inst)
        if snapshots.snapshot_dir(inst.dir, tag).exists():
            raise InstanceStateError(
                f"instance {name!r} already has a snapshot {tag!r}",
                hint=f"`torpor snapshot delete {name} --tag {tag}` first, or choose another tag",
            )
        disk = inst.dir / filenames.DISK
        if not disk.exists():
            raise InstanceStateError(f"instance {name!r} has no disk yet", hint=f"`torpor start {name}` first")
        if tag in disksnap.names(disk):
            raise InstanceStateError(
                f"the disk of {name!r} already has an internal snapshot {tag!r} (left by an interrupted snapshot?)",
                hint=f"`torpor snapshot delete {name} --tag {tag}` removes it",
            )
        from torpor.store import disks

        if held := disks.held_by(inst.dir):
            raise InstanceStateError(
                f"instance {name!r} has additional disks ({', '.join(sorted(held))}): a snapshot with memory would "
                "cover its own disk only, and the additional disks would move on under it",
                hint=f"stop it without saving (`torpor stop --no-save {name}`) for a snapshot of its own disk",
            )
        if inst.status is Status.RUNNING:
            report(f"taking snapshot {tag!r} of the running VM (memory and disk)")
            return dict(_agent(inst).call("POST", "/v1/snapshots", {"tag": tag}))
        return _create_offline(inst, tag, report)


def _create_offline(inst: Instance, tag: str, report: Report) -> dict[str, Any]:
    """A stopped instance's disk; a saved one's memory state too (hard-linked: a saved state never changes)."""
    saved = None
    if inst.status is Status.SAVED:
        try:
            saved = savedstate.load(inst.dir)
        except savedstate.Unusable as e:
            report(f"the saved state is unusable ({e}): the snapshot holds the disk only")
        ram = inst.dir / filenames.MEMORY_FILE
        if (
            saved is not None
            and saved.mechanism == SHARED_RAM
            and (not ram.exists() or savedstate.file_identity(ram) != saved.manifest.get("ramFile"))
        ):
            report("the saved state's RAM file changed since the save: the snapshot holds the disk only")
            saved = None
    final = snapshots.snapshot_dir(inst.dir, tag)
    work = final.with_name(f".{tag}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    disk = inst.dir / filenames.DISK
    try:
        with savedstate.disk_file_edit(inst.dir):
            disksnap.create(disk, tag)
        meta: dict[str, Any] = {"memory": False}
        if saved is not None:
            _link_or_copy(saved.state, work / filenames.STATE_FILE)
            shutil.copyfile(inst.dir / filenames.CIDATA, work / filenames.CIDATA)
            meta = {**records.machine_state(dict(saved.manifest)), "memory": True, "fromSavedState": True}
            firmware.copy_vars(meta.get("firmware"), inst.dir, work)
            if saved.mechanism == SHARED_RAM:  # instant mode: the RAM lives in its own file, which will change
                savedstate.sparse_copy(inst.dir / filenames.MEMORY_FILE, work / filenames.MEMORY_FILE)
                meta["ram"] = snapshots.ram_record(work / filenames.MEMORY_FILE)
        meta.update(tag=tag, createdAt=time.time())
        snapshots.write_meta(work, meta)
        work.rename(final)
        atomic.fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report(f"snapshot {tag!r} taken ({'memory and disk' if saved else 'disk'})")
    return meta


def apply(
    name: str,
    tag: str,
    report: Report,
    *,
    confirm: Confirm,
    start: Callable[[], object],
    root: Path | None = None,
) -> bool:
    """Return ``name`` to snapshot ``tag``; True if the instance runs afterwards.

    ``confirm`` is asked before the instance's current state is replaced; ``start`` starts the instance (the
    restore of the snapshot's memory state, or a cold boot from its disk).
    """
    root = root or home()
    inst = inspect(name, root)
    _refuse_broken(inst)
    snap = snapshots.read(inst.dir, tag)
    problems = _apply_problems(inst, snap, root)
    if problems:
        raise InstanceStateError(
            f"snapshot {tag!r} cannot be applied to {name!r}: {'; '.join(problems)}",
            hint="nothing was changed",
        )
    was_running = inst.status is Status.RUNNING
    current = {
        Status.RUNNING: "the running VM's memory and disk",
        Status.SAVED: "the saved state and the disk",
        Status.STOPPED: "the disk's contents",
    }[inst.status]
    if not confirm(f"applying snapshot {tag!r} replaces {current}"):
        raise InstanceStateError("not applied", hint="nothing was changed")
    if was_running:
        from torpor.instance.stop import force_stop

        force_stop(name, report, root)  # its memory is being replaced and its disk reverted: nothing to keep
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {name!r}"):
        if inspect(name, root).status is Status.RUNNING:
            raise InstanceStateError(f"instance {name!r} was started meanwhile", hint="nothing was changed")
        savedstate.discard(inst.dir)
        disk = inst.dir / filenames.DISK
        disksnap.apply(disk, tag)
        if snap.has_memory:
            _materialize(inst.dir, snap)
    if snap.has_memory or was_running:
        start()
        return True
    report(f"the disk is back at snapshot {tag!r}; `torpor start {name}` boots it")
    return False


def _apply_problems(inst: Instance, snap: snapshots.Snapshot, root: Path) -> list[str]:
    """Why ``snap`` cannot be applied to ``inst`` now (empty if it can)."""
    out = []
    disk = inst.dir / filenames.DISK
    if not disk.exists() or snap.tag not in disksnap.names(disk):
        out.append(f"the disk has no internal snapshot {snap.tag!r} (was it replaced?)")
    if not snap.has_memory:
        return out
    from torpor.config.layering import load_effective
    from torpor.driver.qemu import factory

    qemu = factory.find_qemu(machine.Machine.of(snap.meta["config"]).arch)
    then = (snap.meta.get("qemu") or {}).get("version")
    if then != qemu.version:
        out.append(f"it was taken with QEMU {then}, this is QEMU {qemu.version}")
    try:
        effective = load_effective(root, read_instance_yaml(inst.dir), str(inst.dir / filenames.INSTANCE_YAML))
        changes = machine.changes(snap.meta["config"], effective.config.model_dump(mode="json"))
        if changes:
            out.append(f"the machine changed since ({', '.join(changes)}); change it back to apply this snapshot")
    except TorporError as e:
        out.append(f"the instance's configuration is invalid: {e}")
    out += firmware.problems(snap.meta.get("firmware"), snap.dir)
    if not (snap.dir / filenames.CIDATA).exists() or not snap.state.exists():
        out.append("its memory state is missing")
    elif not savedstate.digest_matches(snap.state, (snap.meta.get("state") or {}).get("digest")):
        out.append("its memory state is damaged (checksum mismatch)")
    elif snap.ram is not None and (
        not snap.ram.exists() or not savedstate.digest_matches(snap.ram, snap.meta["ram"].get("digest"))
    ):
        out.append("its copy of the guest's RAM is missing or damaged (checksum mismatch)")
    return out


def _materialize(inst_dir: Path, snap: snapshots.Snapshot) -> None:
    """Put the snapshot's memory state in place as the instance's saved state (restored by the next start)."""
    sdir = savedstate.saved_dir(inst_dir)
    sdir.mkdir(mode=0o700, exist_ok=True)
    _link_or_copy(snap.state, sdir / filenames.STATE_FILE)
    atomic.write_bytes(inst_dir / filenames.CIDATA, (snap.dir / filenames.CIDATA).read_bytes())
    firmware.copy_vars(snap.meta.get("firmware"), snap.dir, inst_dir)
    ram_file = None
    if snap.ram is not None:  # instant mode: the guest's RAM file goes back to the snapshot's copy
        ram = inst_dir / filenames.MEMORY_FILE
        tmp = ram.with_name(f".{ram.name}.tmp")
        savedstate.sparse_copy(snap.ram, tmp)
        tmp.rename(ram)
        ram_file = savedstate.file_identity(ram)
    manifest = {
        **records.machine_state(snap.meta),
        "disk": savedstate.file_identity(inst_dir / filenames.DISK),
        "ramFile": ram_file,
    }
    # Its digest was verified just now (see _apply_problems), after which the file was linked.
    state = sdir / filenames.STATE_FILE
    manifest["state"] = dict(manifest["state"], identity=savedstate.written_identity(state))
    savedstate.write_manifest(inst_dir, manifest)


def list_snapshots(name: str, root: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    inst = inspect(name, root or home())
    good, bad = snapshots.list_all(inst.dir)
    return [s.row() for s in good], bad


def delete(name: str, tag: str, report: Report, root: Path | None = None) -> None:
    snapshots.validate_tag(tag)
    inst = inspect(name, root or home())
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {name!r}"):
        inst = inspect(name, root or home())
        _refuse_broken(inst)
        d = snapshots.snapshot_dir(inst.dir, tag)
        disk = inst.dir / filenames.DISK
        in_disk = disk.exists() and tag in disksnap.names(disk)
        if not d.exists() and not in_disk:
            raise InstanceStateError(
                f"instance {name!r} has no snapshot {tag!r}", hint=f"`torpor snapshot list {name}` shows its snapshots"
            )
        if inst.status is Status.RUNNING:
            _agent(inst).call("DELETE", "/v1/snapshots", {"tag": tag})
        else:
            if in_disk:
                with savedstate.disk_file_edit(inst.dir):
                    disksnap.delete(disk, tag)
            snapshots.remove(inst.dir, tag)
    report(f"deleted snapshot {tag!r}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem (a mount point for saved/, say); a mapped-ram state stays sparse
        savedstate.sparse_copy(src, dst)
