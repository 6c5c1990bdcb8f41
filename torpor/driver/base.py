"""The driver protocols: what the host agent asks of the VM underneath it.

A driver runs one VM inside the host agent's asyncio loop.  :class:`Lifecycle` is what every driver does;
:class:`SaveRestore` and :class:`Snapshots` are capabilities, announced in :class:`Features` so that the agent
asks before it uses them (as Lima's host agent holds a ``driver.Driver`` and checks its optional interfaces).
A new capability is a new protocol here and its implementation under ``driver/qemu/``, not a branch in the
agent.  The host agent gets its drivers from a :class:`Factory` (``driver/qemu/factory.py`` for QEMU).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torpor.driver.values import Accel, BootPlan, Features, StopOutcome, VMState

if TYPE_CHECKING:
    from torpor.store.savedstate import Saved

__all__ = [
    "Accel",
    "BootPlan",
    "Driver",
    "Factory",
    "Features",
    "Lifecycle",
    "SaveRestore",
    "Shares",
    "Snapshots",
    "StopOutcome",
    "VMState",
]

# Called while the VM is created but not yet running: the moment to connect to guest channels so that nothing
# the guest writes early is lost.
BeforeRun = Callable[[], Awaitable[None]]
Progress = Callable[[int, int], None]  # bytes done, bytes in all


class Lifecycle(Protocol):
    features: Features
    accel: Accel

    def machine_record(self) -> dict[str, Any]:
        """What a saved state or snapshot records of the machine: {"qemu": ..., "machine": ..., "argv": [...]}."""
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

    async def wait(self) -> int:
        """Wait until the VM process has exited; return its exit code."""
        ...

    async def inspect(self) -> dict[str, object]:
        """What the driver knows about the running VM (state, pid, accelerator...)."""
        ...

    async def where(self) -> str:
        """Where the VM is, for a boot that timed out (its run state and where its vCPUs are)."""
        ...

    def stderr_tail(self) -> str:
        """The last lines the hypervisor printed, for an error message."""
        ...

    async def close(self) -> None: ...


class SaveRestore(Protocol):
    ram_file: Path | None  # a RAM file that is half of the saved state (instant mode), else None

    async def save(
        self, state: Path, progress: Progress | None = None, *, written: Callable[[], None] | None = None
    ) -> tuple[str, dict[str, object]]:
        """Pause the VM and write its state to ``state``; return the mechanism used and the hypervisor's
        statistics.  ``written`` is called once the state is written (the file may not be closed yet)."""
        ...

    async def restore(
        self,
        before_run: BeforeRun,
        *,
        progress: Progress | None = None,
        while_loading: Callable[[], None] | None = None,
    ) -> None:
        """Load the saved state the driver was made for and let the VM run; ``while_loading`` runs once the
        load has begun (work that may overlap it)."""
        ...

    async def resume(self) -> None:
        """Let a paused VM run again (after a failed save)."""
        ...

    async def quit(self) -> int:
        """End the VM at once, the guest not asked (its state saved already), and wait for it."""
        ...


class Shares(Protocol):
    async def detach_shares(self) -> None:
        """Before a save or snapshot, once the guest has unmounted them: take out the host-directory devices that
        a saved state cannot hold (virtiofs); the state and the command line recorded are then without them."""
        ...

    async def attach_shares(self) -> None:
        """After a restore, a snapshot or a failed save: those devices back in, for the guest to mount."""
        ...


class Snapshots(Protocol):
    async def snapshot(
        self,
        tag: str,
        state: Path,
        ram_copy: Path,
        progress: Progress | None = None,
        while_paused: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[str, dict[str, object]]:
        """Capture disk, RAM and devices of the running VM; the disk's part is named ``tag``.  ``while_paused``
        runs once they are captured, before the VM runs again."""
        ...

    async def delete_snapshot(self, tag: str) -> None:
        """Delete the disk's part of snapshot ``tag`` while the VM runs."""
        ...


class Driver(Lifecycle, SaveRestore, Snapshots, Shares, Protocol):
    """A driver with every capability (whether each works is in ``features``)."""


class Factory(Protocol):
    """Makes the host agent's drivers."""

    def boot(self, inst_dir: Path, name: str, plan: BootPlan) -> Driver:
        """A driver for a cold boot (blocking: it may probe the host first)."""
        ...

    def restore(self, inst_dir: Path, name: str, saved: Saved, early: object | None) -> Driver:
        """A driver for restoring ``saved``; ``early`` is what the early restore path launched, if anything."""
        ...

    def restore_problems(self, saved: Saved, inst_dir: Path) -> list[str]:
        """Why ``saved`` cannot be restored by this driver now (the state's digest not checked)."""
        ...
