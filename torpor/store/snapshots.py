"""Named snapshots of an instance: ``snapshots/TAG/`` beside the disk's internal qcow2 snapshot of the same name.

A snapshot always holds the disk (an internal snapshot inside ``disk.qcow2``, named TAG); a snapshot of a
running (or saved) VM also holds its memory and devices: ``state.bin`` in the same format as a saved state, the
cidata seed the VM was booted with, and in ``snapshot.json`` the record a restore needs (QEMU version and argv,
boot record, mechanism, digest).  ``snapshot.json`` is written last with its own digest: a directory without a
valid one is an interrupted snapshot and is never applied.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.errors import InstanceStateError
from torpor.store import atomic, filenames, records, savedstate, sealed
from torpor.store.instance import list_names

if TYPE_CHECKING:
    from torpor.store.records import RamCopy

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise InstanceStateError(
            f"invalid snapshot tag {tag!r}",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return tag


def snapshots_dir(inst_dir: Path) -> Path:
    return inst_dir / filenames.SNAPSHOTS_DIR


def snapshot_dir(inst_dir: Path, tag: str) -> Path:
    return snapshots_dir(inst_dir) / validate_tag(tag)


META_DIGEST = "metaDigest"


def write_meta(d: Path, meta: Mapping[str, object]) -> None:
    """Complete the snapshot in ``d``: its record goes in last, atomically, with its digest."""
    sealed.write(d / filenames.SNAPSHOT_META, dict(meta), META_DIGEST)


@dataclass(frozen=True)
class Snapshot:
    tag: str
    dir: Path
    meta: dict[str, Any]

    @property
    def has_memory(self) -> bool:
        return bool(self.meta.get("memory"))

    @property
    def created(self) -> float:
        return float(self.meta.get("createdAt", 0))

    @property
    def state(self) -> Path:
        return self.dir / filenames.STATE_FILE

    @property
    def ram(self) -> Path | None:
        """The copy of the guest's RAM file (instant mode), else None (the RAM is in ``state``)."""
        return self.dir / filenames.MEMORY_FILE if self.meta.get("ram") else None

    @property
    def size(self) -> int:
        """Bytes its memory state occupies (the disk snapshot shares clusters with the disk)."""
        state = self.meta.get("state") or {}
        ram = self.meta.get("ram") or {}
        return int(state.get("allocated", 0)) + int(ram.get("allocated", 0))

    def row(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "createdAt": self.created,
            "memory": self.has_memory,
            "size": self.size,
            "mechanism": self.meta.get("mechanism"),
            "qemuVersion": (self.meta.get("qemu") or {}).get("version"),
        }


def ram_record(path: Path) -> RamCopy:
    """What a snapshot records of its RAM file copy: size, allocation and digest."""
    st = path.stat()
    return {"size": st.st_size, "allocated": st.st_blocks * 512, "digest": savedstate.state_digest(path)}


def read(inst_dir: Path, tag: str) -> Snapshot:
    """The complete snapshot ``tag``; a clear error if there is none (or only an interrupted one)."""
    d = snapshot_dir(inst_dir, tag)
    path = d / filenames.SNAPSHOT_META
    if not path.exists():
        if d.exists():
            raise InstanceStateError(
                f"snapshot {tag!r} is incomplete (its creation was interrupted)",
                hint=f"delete it with `torpor snapshot delete {inst_dir.name} --tag {tag}`",
            )
        raise InstanceStateError(
            f"instance {inst_dir.name!r} has no snapshot {tag!r}",
            hint=f"`torpor snapshot list {inst_dir.name}` shows its snapshots",
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InstanceStateError(f"snapshot {tag!r} cannot be read: {e}") from None
    if not sealed.verifies(meta, META_DIGEST):
        raise InstanceStateError(f"snapshot {tag!r} is damaged (its record's digest does not match)")
    lacking = records.missing(meta, ("tag", "createdAt", "memory"))
    if not lacking and meta["memory"]:
        lacking = records.missing(meta, records.MACHINE_STATE)
    if lacking:
        raise InstanceStateError(
            f"snapshot {tag!r} is not one this torpor version reads (it lacks {', '.join(lacking)})",
            hint=f"delete it with `torpor snapshot delete {inst_dir.name} --tag {tag}`",
        )
    return Snapshot(tag, d, meta)


def list_all(inst_dir: Path) -> tuple[list[Snapshot], list[str]]:
    """Complete snapshots, oldest first, and the tags of broken or incomplete ones."""
    good, bad = [], []
    root = snapshots_dir(inst_dir)
    for d in sorted(root.iterdir()) if root.exists() else []:
        if d.name.startswith("."):
            continue
        try:
            good.append(read(inst_dir, d.name))
        except InstanceStateError:
            bad.append(d.name)
    good.sort(key=lambda s: s.created)
    return good, bad


def remove(inst_dir: Path, tag: str) -> None:
    d = snapshot_dir(inst_dir, tag)
    if d.exists():
        shutil.rmtree(d)
        atomic.fsync_dir(d.parent)


def held_ssh_ports(root: Path) -> set[int]:
    """The host ports restores will forward to SSH again: those of every instance's saved state and memory
    snapshots under ``root``, whose QEMU command lines are reused as they are.  A cold boot leaves them alone: a
    restore that finds its port taken fails, and the state cannot be restored.  Records that are damaged or
    incomplete are left out: nothing restores from them."""
    ports: set[int] = set()
    for name in list_names(root):
        inst_dir = root / name
        ports.update(int(snap.meta["boot"]["sshPort"]) for snap in list_all(inst_dir)[0] if snap.has_memory)
        with contextlib.suppress(savedstate.Unusable):
            if (saved := savedstate.load(inst_dir)) is not None:
                ports.add(saved.manifest["boot"]["sshPort"])
    return ports
