"""Complete records as torpor writes them, for unit tests that read them back (store/records.py)."""

from __future__ import annotations

from typing import Any


def boot_record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "config": {"arch": "x86_64", "cpus": 2, "memory": 2**30, "saveMode": "copy", "saveOnStop": False},
        "configDigest": "sha256:x",
        "configSources": "sha256:y",
        "sshPort": 40000,
        "user": "dev",
        "defaultGuest": True,
        "accel": "tcg",
    }
    return {**record, **fields}


def machine_state(**fields: Any) -> dict[str, Any]:
    boot = fields.pop("boot", None) or boot_record()
    record: dict[str, Any] = {
        "createdAt": 1.0,
        "qemu": {"binary": "qemu-system-x86_64", "version": "7.2.0"},
        "machine": "q35",
        "mechanism": "mapped-ram",
        "argv": ["qemu-system-x86_64"],
        "boot": boot,
        "config": boot["config"],
        "configDigest": boot["configDigest"],
        "cidataSha256": "sha256:z",
        "state": {"size": 0, "allocated": 0},
        "qemuStats": {},
        "mounts": [],
    }
    return {**record, **fields}


def manifest(**fields: Any) -> dict[str, Any]:
    """A saved state's manifest but for format, complete and its digest (savedstate.write_manifest adds them)."""
    disk = fields.pop("disk", {"size": 0, "mtimeNs": 0, "inode": 0})
    return {**machine_state(**fields), "disk": disk, "ramFile": fields.get("ramFile"), "saveSeconds": 0.1}
