"""What ``torpor list`` shows about each instance."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from torpor.config.layering import load_effective
from torpor.errors import ConfigError, HostAgentError, InstanceNotFound
from torpor.hostagent.client import HostAgentClient
from torpor.store import filenames, savedstate
from torpor.store.instance import Status, home, inspect, list_names, read_instance_yaml


def describe(name: str, root: Path) -> dict[str, Any]:
    inst = inspect(name, root)
    row: dict[str, Any] = {"name": name, "status": inst.status.value, "dir": str(inst.dir)}
    try:
        eff = load_effective(root, read_instance_yaml(inst.dir), str(inst.dir / filenames.INSTANCE_YAML))
        cfg = eff.config
        row.update(
            vmType=cfg.vmType,
            arch=cfg.arch,
            cpus=cfg.cpus,
            memory=cfg.memory,
            disk=cfg.disk,
            saveOnStop=cfg.saveOnStop,
            saveMode=cfg.saveMode,
            mounts=[_mount_row(m.location, m.mountPoint, m.writable, cfg.mountType) for m in cfg.mounts],
        )
    except ConfigError as e:
        if inst.status is Status.STOPPED:
            row["status"] = Status.BROKEN.value
            inst.reason = f"invalid configuration: {e}"
    if inst.reason:
        row["reason"] = inst.reason
    row["saved"] = False
    try:
        saved = savedstate.load(inst.dir)
    except savedstate.Unusable as e:
        row["savedStateProblem"] = str(e)
        saved = None
    if saved is not None:
        row.update(
            saved=True,
            stateSize=saved.size,
            stateAge=round(time.time() - saved.created, 1),
            saveMechanism=saved.mechanism,
        )
    if inst.status is Status.RUNNING:
        # The running boot's mounts, each with whether it is up, as its host agent sees them.
        with contextlib.suppress(HostAgentError, KeyError, TypeError):
            row["mounts"] = HostAgentClient(inst.dir / filenames.HA_SOCK, timeout=5).get("/v1/info")["mounts"]
    if aside := set_aside(inst.dir):
        row["setAside"] = {"count": len(aside), "bytes": sum(du(p) for p in aside)}
    row["protected"] = (inst.dir / filenames.PROTECTED).exists()
    if inst.agent_pid is not None:
        row["hostAgentPID"] = inst.agent_pid
    if inst.qemu_pid is not None:
        row["qemuPID"] = inst.qemu_pid
    return row


def set_aside(inst_dir: Path) -> list[Path]:
    """The saved states a refused restore set aside (kept for diagnosis until `torpor prune`)."""
    return sorted(inst_dir.glob(filenames.SAVED_ASIDE_PREFIX + "*"))


def du(path: Path) -> int:
    """The bytes a file or directory tree takes on disk."""
    if not path.is_dir():
        with contextlib.suppress(OSError):
            return path.lstat().st_blocks * 512
        return 0
    return sum(du(p) for p in path.iterdir())


def _mount_row(location: str, mount_point: str, writable: bool, mount_type: str) -> dict[str, Any]:
    return {"location": location, "mountPoint": mount_point, "writable": writable, "mountType": mount_type}


def describe_all(names: list[str] | None = None) -> list[dict[str, Any]]:
    root = home()
    if names:
        for n in names:
            if n not in list_names(root):
                raise InstanceNotFound(f"instance {n!r} does not exist")
    return [describe(n, root) for n in (names or list_names(root))]
