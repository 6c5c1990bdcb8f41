"""Delete an instance and everything in its directory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from torpor.errors import InstanceStateError
from torpor.instance.stop import force_stop
from torpor.store import filenames, lock
from torpor.store.instance import Status, home, inspect


def delete(name: str, force: bool, report: Callable[[str], None], root: Path | None = None) -> None:
    """Remove the instance directory: disk, saved state and all."""
    root = root or home()
    inst = inspect(name, root)
    if (inst.dir / filenames.PROTECTED).exists():
        raise InstanceStateError(
            f"instance {name!r} is protected", hint=f"`torpor unprotect {name}` first, if you mean to delete it"
        )
    if inst.status not in (Status.STOPPED, Status.SAVED):
        if not force:
            raise InstanceStateError(
                f"instance {name!r} is {inst.status.value.lower()}",
                hint=f"stop it with `torpor stop {name}` first, or use `torpor delete --force {name}`",
            )
        if inst.agent_pid is not None or inst.qemu_pid is not None:
            force_stop(name, report, root)
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {name!r}"):
        shutil.rmtree(inst.dir)
