"""The driver protocol.

The CLI side prepares (``create_disk``); the host agent side runs the VM (``start``/``stop``/``kill``/``inspect``)
inside its asyncio loop.  Capabilities beyond the basic lifecycle (saving and restoring machine state, snapshots)
are announced in :class:`Features` so that callers ask before they use them.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Features:
    save_restore: bool = False
    snapshots: bool = False


class VMState(enum.Enum):
    """The VM's run state as the hypervisor reports it."""

    NOT_STARTED = "not-started"
    PAUSED = "paused"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
    EXITED = "exited"


@dataclass(frozen=True)
class StopOutcome:
    clean: bool  # the guest shut itself down within the timeout
    detail: str


# Called by ``start`` while the VM is created but not yet running: the moment to connect to guest channels
# so that nothing the guest writes early is lost.
BeforeRun = Callable[[], Awaitable[None]]


class Driver(Protocol):
    features: Features

    def create_disk(self, base: Path | None) -> None:
        """Create the instance's disk (over ``base`` when given) unless it exists."""
        ...

    async def start(self, before_run: BeforeRun) -> None:
        """Launch the VM and let it run."""
        ...

    async def stop(self, timeout: float) -> StopOutcome:
        """Ask the guest to shut down; force the VM off after ``timeout`` seconds."""
        ...

    async def kill(self) -> None:
        """Turn the VM off at once."""
        ...

    async def inspect(self) -> dict[str, object]:
        """What the driver knows about the running VM (state, pid, accelerator...)."""
        ...

    async def wait(self) -> int:
        """Wait until the VM process has exited; return its exit code."""
        ...
