"""Instance directories and their status, derived from files and live processes, never stored.

A host agent that is alive holds an exclusive ``flock`` on its pid file; a stale pid file (the agent was killed,
or the host rebooted) is therefore recognisable without trusting a pid that may have been reused.
"""

from __future__ import annotations

import enum
import os
import re
import socket
from pathlib import Path

from torpor.errors import InstanceNotFound, TorporError
from torpor.store import filenames, lock

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


class Status(enum.Enum):
    RUNNING = "Running"
    STOPPED = "Stopped"
    SAVED = "Saved"  # stopped, with a complete saved machine state that the next start restores
    BROKEN = "Broken"


def home() -> Path:
    """``$TORPOR_HOME``, default ``~/.torpor``."""
    env = os.environ.get("TORPOR_HOME")
    return Path(env) if env else Path.home() / ".torpor"


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name.endswith("-"):
        raise TorporError(
            f"invalid instance name {name!r}",
            hint="use 1-41 lowercase letters, digits and dashes, starting with a letter or digit",
        )
    return name


def instance_dir(name: str, root: Path | None = None) -> Path:
    return (root or home()) / validate_name(name)


def list_names(root: Path | None = None) -> list[str]:
    base = root or home()
    if not base.is_dir():
        return []
    # Only directories holding an instance file: anything else a user keeps in $TORPOR_HOME is not an instance.
    return sorted(
        d.name
        for d in base.iterdir()
        if not d.name.startswith(("_", ".")) and NAME_RE.fullmatch(d.name) and (d / filenames.INSTANCE_YAML).is_file()
    )


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def socket_answers(path: Path, timeout: float = 1.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


class Instance:
    """What :func:`inspect` found.  (A plain class: importing dataclasses costs every CLI command ~5 ms.)"""

    def __init__(
        self, name: str, dir: Path, status: Status, agent_pid: int | None = None, qemu_pid: int | None = None
    ) -> None:
        self.name = name
        self.dir = dir
        self.status = status
        self.reason = ""  # why the instance is Broken
        self.agent_pid = agent_pid  # a live host agent
        self.qemu_pid = qemu_pid  # a live QEMU (with or without an agent)


def inspect(name: str, root: Path | None = None) -> Instance:
    """Look at an instance directory and the processes it names, and say what state the instance is in."""
    d = instance_dir(name, root)
    if not (d / filenames.INSTANCE_YAML).is_file():
        raise InstanceNotFound(
            f"instance {name!r} does not exist",
            hint=f"create it with `torpor create --name {name}` or `torpor start {name}`",
        )
    agent_pid = read_pid(d / filenames.HA_PID)
    qemu_pid = read_pid(d / filenames.QEMU_PID)
    agent_live = agent_pid is not None and lock.is_locked(d / filenames.HA_PID)
    qemu_live = qemu_pid is not None and pid_alive(qemu_pid) and _is_qemu(qemu_pid)
    inst = Instance(
        name, d, Status.STOPPED, agent_pid=agent_pid if agent_live else None, qemu_pid=qemu_pid if qemu_live else None
    )
    if agent_live:
        if socket_answers(d / filenames.HA_SOCK):
            inst.status = Status.RUNNING
        else:
            inst.status = Status.BROKEN
            inst.reason = f"host agent (pid {agent_pid}) is not answering on {filenames.HA_SOCK}"
    elif qemu_live:
        inst.status = Status.BROKEN
        inst.reason = (
            f"QEMU (pid {qemu_pid}) is running without its host agent"
            f"{f' (pid {agent_pid} died)' if agent_pid else ''}; `torpor stop --force {name}` cleans up"
        )
    elif agent_pid is None and (d / filenames.SAVED_DIR / filenames.MANIFEST).exists():
        inst.status = Status.SAVED
    elif agent_pid is not None:
        inst.status = Status.BROKEN
        inst.reason = (
            f"host agent (pid {agent_pid}) died without cleaning up (stale {filenames.HA_PID}); "
            f"`torpor start {name}` recovers"
        )
    return inst


def _is_qemu(pid: int) -> bool:
    """Guard against pid reuse: the process must be a QEMU."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return b"qemu-system" in os.path.basename(cmd)


def read_instance_yaml(inst_dir: Path) -> str:
    """The instance file's text; a ConfigError naming it if it cannot be read or is not UTF-8 text."""
    from torpor.config import sources  # with hashlib and typing: not for `torpor stop`, which never reads it

    return sources.read_text(inst_dir / filenames.INSTANCE_YAML)


def clear_runtime_files(inst_dir: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove what a dead host agent left behind (except ``keep``); return the names removed."""
    removed = []
    for n in filenames.RUNTIME_FILES:
        if n in keep:
            continue
        p = inst_dir / n
        if p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(n)
    for p in inst_dir.glob(filenames.MOUNT_SOCK_GLOB):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed
