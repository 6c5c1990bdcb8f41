"""Additional disks: ``$TORPOR_HOME/_disks/NAME/datadisk`` (qcow2), made with ``torpor disk create`` and given
to instances by name (Lima's ``additionalDisks``).

A disk is in use while an instance that lists it runs or holds a saved state: the disk is part of that machine
(snapshots with memory of such an instance are refused: they cover the instance's own disk only).  Who uses a
disk is read from the instances' records (nothing to unlock after a crash): a running boot's ``boot.json`` and a
saved state's manifest.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from torpor import subp
from torpor.errors import InstanceStateError, TorporError
from torpor.store import atomic, filenames

DISKS_DIR = "_disks"
DATA_DISK = "datadisk"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")


@dataclass(frozen=True)
class Disk:
    name: str
    path: Path  # the qcow2 file
    size: int  # virtual size, bytes
    used_by: tuple[str, ...]  # instances


def disk_path(root: Path, name: str) -> Path:
    if not NAME.fullmatch(name):
        raise TorporError(f"invalid disk name {name!r}", hint="use lowercase letters, digits, - and _ (up to 31)")
    return root / DISKS_DIR / name / DATA_DISK


def _size(path: Path) -> int:
    return int(json.loads(subp.run(["qemu-img", "info", "-U", "--output=json", path]).stdout)["virtual-size"])


def create(root: Path, name: str, size: int) -> Path:
    path = disk_path(root, name)
    if path.exists():
        raise TorporError(f"disk {name!r} already exists", hint=f"`torpor disk resize {name} --size ...` grows it")
    tmp = path.parent.with_name(f".{name}.creating")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        subp.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / DATA_DISK), str(size)])
        tmp.rename(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic.fsync_dir(path.parent.parent)
    return path


def users(root: Path, name: str) -> tuple[str, ...]:
    """The instances whose running boot, saved state or memory snapshot includes disk ``name``."""
    found = []
    for inst_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if name in held_by(inst_dir):
            found.append(inst_dir.name)
    return tuple(found)


def held_by(inst_dir: Path) -> set[str]:
    """The additional disks an instance's running boot or saved state includes."""
    records = [inst_dir / filenames.BOOT_RECORD, inst_dir / filenames.SAVED_DIR / filenames.MANIFEST]
    held: set[str] = set()
    for path in records:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        config = record.get("config") or record.get("boot", {}).get("config") or {}
        if path.name == filenames.BOOT_RECORD and not (inst_dir / filenames.QEMU_PID).exists():
            continue  # a boot record outlives its boot; only a running one holds the disks
        held |= {d["name"] for d in config.get("additionalDisks", []) if isinstance(d, dict) and "name" in d}
    return held


def listing(root: Path) -> list[Disk]:
    d = root / DISKS_DIR
    if not d.is_dir():
        return []
    return [
        Disk(p.name, p / DATA_DISK, _size(p / DATA_DISK), users(root, p.name))
        for p in sorted(d.iterdir())
        if (p / DATA_DISK).exists()
    ]


def _free(root: Path, name: str, verb: str) -> Path:
    path = disk_path(root, name)
    if not path.exists():
        raise TorporError(f"disk {name!r} does not exist", hint="`torpor disk list` shows the disks")
    if used := users(root, name):
        raise InstanceStateError(
            f"disk {name!r} is in use by {', '.join(used)} (running or saved); cannot {verb} it",
            hint="stop the instance without saving (`torpor stop --no-save`; a saved one: `start --cold`) first",
        )
    return path


def resize(root: Path, name: str, size: int) -> int:
    """Grow disk ``name`` to ``size``; its size before.  Shrinking is refused (the filesystem spans it)."""
    path = _free(root, name, "resize")
    current = _size(path)
    if size < current:
        raise TorporError(f"disk {name!r} is {current} bytes; a disk is never shrunk (its filesystem spans it)")
    subp.run(["qemu-img", "resize", "-q", str(path), str(size)])
    return current


def delete(root: Path, name: str) -> None:
    path = _free(root, name, "delete")
    shutil.rmtree(path.parent)


def check_for_boot(root: Path, instance: str, names: list[str]) -> list[Path]:
    """The paths of the disks a cold boot of ``instance`` attaches; an error if one is missing or another
    instance holds it."""
    paths = []
    for name in names:
        path = disk_path(root, name)
        if not path.exists():
            raise TorporError(
                f"additionalDisks: there is no disk {name!r}", hint=f"`torpor disk create {name} --size 10GiB`"
            )
        if others := [u for u in users(root, name) if u != instance]:
            raise InstanceStateError(
                f"additionalDisks: disk {name!r} is in use by {', '.join(others)}",
                hint="a disk belongs to one machine at a time; stop that instance without saving first",
            )
        paths.append(path)
    return paths
