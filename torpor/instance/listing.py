"""What ``torpor list`` shows about each instance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torpor.config.layering import load_effective
from torpor.errors import ConfigError, InstanceNotFound
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
    if inst.agent_pid is not None:
        row["hostAgentPID"] = inst.agent_pid
    if inst.qemu_pid is not None:
        row["qemuPID"] = inst.qemu_pid
    return row


def describe_all(names: list[str] | None = None) -> list[dict[str, Any]]:
    root = home()
    if names:
        for n in names:
            if n not in list_names(root):
                raise InstanceNotFound(f"instance {n!r} does not exist")
    return [describe(n, root) for n in (names or list_names(root))]
