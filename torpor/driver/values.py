"""The values the driver protocols (base.py) pass around.

Apart from the protocols, and NamedTuples rather than dataclasses (a 5 ms import): the host agent's early restore
path uses them before anything heavy is imported, and building the protocol classes costs it time it has not.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, NamedTuple


class Features(NamedTuple):
    save_restore: bool = False
    snapshots: bool = False


class Accel(NamedTuple):
    name: str  # "kvm" or "tcg"
    reason: str  # why (shown by `torpor info` and as the fallback notice)


class VMState(enum.Enum):
    """The VM's run state as the hypervisor reports it."""

    NOT_STARTED = "not-started"
    PAUSED = "paused"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
    EXITED = "exited"


class StopOutcome(NamedTuple):
    clean: bool  # the guest shut itself down within the timeout
    detail: str


class BootPlan(NamedTuple):
    """What the host agent decides about a cold boot; the factory turns it into a VM."""

    config: dict[str, Any]  # the effective configuration's JSON
    kernel_cmdline: str
    ssh_port: int  # the host port forwarded to the guest's SSH
    ready_channel: bool  # the guest reports ready on torpor's own channel (torpor's default guest)
    data_disks: tuple[Path, ...] = ()  # additionalDisks' files, in order
