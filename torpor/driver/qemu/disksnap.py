"""Internal qcow2 snapshots of an instance's disk while QEMU is not running (``qemu-img snapshot``).

While the VM runs, QEMU holds the image and the driver takes and deletes them over QMP instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from torpor import subp


def names(disk: Path) -> set[str]:
    """The disk's internal snapshots (read with -U: a running QEMU may hold the image)."""
    info = json.loads(subp.run(["qemu-img", "info", "-U", "--output=json", disk]).stdout)
    return {s["name"] for s in info.get("snapshots", [])}


def create(disk: Path, tag: str) -> None:
    subp.run(["qemu-img", "snapshot", "-c", tag, disk])


def apply(disk: Path, tag: str) -> None:
    """Revert the disk to ``tag`` (the snapshot stays, so it can be applied again)."""
    subp.run(["qemu-img", "snapshot", "-a", tag, disk])


def delete(disk: Path, tag: str) -> None:
    subp.run(["qemu-img", "snapshot", "-d", tag, disk])
