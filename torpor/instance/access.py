"""Reaching a running instance's guest: the argv of ``ssh`` and ``scp`` for ``shell``, ``copy``, ``show-ssh``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torpor.errors import InstanceStateError, TorporError
from torpor.guest import ssh
from torpor.store import filenames
from torpor.store.instance import Status, inspect


def _running_dir(name: str) -> Path:
    inst = inspect(name)
    if inst.status is not Status.RUNNING:
        raise InstanceStateError(f"instance {name!r} is not running", hint=f"start it with `torpor start {name}`")
    if not (inst.dir / filenames.SSH_CONFIG).exists():
        raise InstanceStateError(f"instance {name!r} has no SSH access yet", hint="wait until `torpor start` returns")
    return inst.dir


def ssh_config_path(name: str) -> Path:
    return _running_dir(name) / filenames.SSH_CONFIG


def ssh_command(name: str, tty: bool, script: str) -> list[str]:
    """ssh into ``name``, running ``script`` with the user's shell (a login shell when empty)."""
    d = _running_dir(name)
    options = ["-t"] if tty else ["-T"]
    try:
        wanted = json.loads((d / filenames.BOOT_RECORD).read_text())["config"].get("ssh", {})
    except (OSError, ValueError, KeyError):
        wanted = {}
    # ssh.forwardAgent, forwardX11, forwardX11Trusted: as Lima's `limactl shell`
    options += [
        flag
        for key, flag in (("forwardAgent", "-A"), ("forwardX11", "-X"), ("forwardX11Trusted", "-Y"))
        if wanted.get(key)
    ]
    return ssh.ssh_argv(d, name, options, [script] if script else None)


def scp_command(paths: list[str], recursive: bool) -> list[str]:
    """scp with ``NAME:path`` operands turned into the instance's SSH host; all guests must be running."""
    if len(paths) < 2:
        raise TorporError("copy needs at least a source and a destination", hint="torpor copy SRC... DST")
    config: Path | None = None
    operands = []
    for p in paths:
        name, sep, rest = p.partition(":")
        if sep and name and "/" not in name:
            d = _running_dir(name)
            if config is not None and config != d / filenames.SSH_CONFIG:
                raise TorporError("copy between two instances is not supported", hint="copy through the host")
            config = d / filenames.SSH_CONFIG
            operands.append(f"{ssh.host_alias(name)}:{rest}")
        else:
            operands.append(p)
    if config is None:
        raise TorporError("none of the paths is in an instance", hint="name guest paths as NAME:path")
    return ["scp", "-F", str(config), *(["-r"] if recursive else []), *operands]


def guest_dir_for(mounts: list[dict[str, Any]], host_dir: str) -> str | None:
    """Where ``host_dir`` is in the guest through ``mounts`` (the deepest mount holding it), or None."""
    best: tuple[int, str] | None = None
    for m in mounts:
        location = m["location"].rstrip("/") or "/"
        if host_dir == location or host_dir.startswith(location.rstrip("/") + "/"):
            rest = host_dir[len(location) :].lstrip("/")
            point = m["mountPoint"]
            guest = os.path.join(point, rest) if rest else point
            if best is None or len(location) > best[0]:
                best = (len(location), guest)
    return best[1] if best else None


def running_mounts(name: str) -> list[dict[str, Any]]:
    """The mounts of the boot ``name`` is running (its boot record's)."""
    try:
        record = json.loads((_running_dir(name) / filenames.BOOT_RECORD).read_text())
    except (OSError, ValueError):
        return []
    mounts = record.get("config", {}).get("mounts", []) if isinstance(record, dict) else []
    return mounts if isinstance(mounts, list) else []
