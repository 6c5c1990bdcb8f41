"""How a machine state is written and read, by name: the choice and the QMP set-up each needs (pure, no I/O).

``stream``
    A migration stream written into a file descriptor the host agent opened and passed to QEMU (``getfd``): no
    helper process, works on every QEMU.  Zero pages cost a few bytes each.
``mapped-ram``
    QEMU 9.0+: ``file:`` migration with the ``mapped-ram`` and ``multifd`` capabilities.  Each RAM page has a fixed
    offset in the file and several threads write and read it; zero pages are holes, so the (sparse) file occupies
    about the guest's touched memory whatever its size, and loading is parallel.  Zero pages are found by the
    migration thread (``zero-page-detection: legacy``), so the writing threads see only pages to write.
``multifd``
    QEMU 4.0-8.2 (Debian 12's 7.2): the main stream and ``multifd`` page channels over unix sockets, which the
    host agent relays into regions of one sparse state file and back (relay.py): several threads load the RAM.
``shared-ram``
    saveMode instant: the guest RAM lives in a shared memory-backend-file that stays where it is
    (``x-ignore-shared``); the state file holds the device state only.

Kept free of asyncio and qemu.qmp: the host agent's early restore path uses it before those are imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

STREAM = "stream"
MAPPED_RAM = "mapped-ram"
MULTIFD = "multifd"
SHARED_RAM = "shared-ram"
ALL = (STREAM, MAPPED_RAM, MULTIFD, SHARED_RAM)
FD_NAME = "torpor-state"


def multifd_channels() -> int:
    """Threads QEMU writes and reads a mapped-ram state with: one per host CPU, between 2 and 8."""
    return max(2, min(8, os.cpu_count() or 2))


DESCRIPTIONS = {
    STREAM: "migration stream into a file descriptor (every QEMU)",
    MAPPED_RAM: f"file: migration with mapped-ram and multifd ({multifd_channels()} threads), sparse state file",
    MULTIFD: f"migration stream and {multifd_channels()} multifd channels, relayed into one sparse state file",
    SHARED_RAM: "guest RAM in a shared memory-backend-file, x-ignore-shared; the state holds devices only",
}


CHOICE_ENV = "TORPOR_SAVE_MECHANISM"  # another copy mechanism, for tests and diagnosis (see choose)


def wanted() -> str | None:
    """The copy mechanism $TORPOR_SAVE_MECHANISM asks for, if any (:func:`choose` decides whether it is used)."""
    return os.environ.get(CHOICE_ENV) or None


def copy_mechanisms(capability_names: set[str], path: Path) -> list[str]:
    """The mechanisms a copy save of ``path`` can use with a QEMU that has these capabilities, best first:
    mapped-ram, multifd through the relay, a stream."""
    usable = []
    # The file: URI takes options after a comma; a path with one goes through the relay instead.
    if "mapped-ram" in capability_names and "multifd" in capability_names and "," not in str(path):
        usable.append(MAPPED_RAM)
    if "multifd" in capability_names:
        usable.append(MULTIFD)
    return [*usable, STREAM]


def choose(capability_names: set[str], shared_ram: bool, path: Path, wanted: str | None = None) -> str:
    """The mechanism for a save: shared-ram for a shared RAM file, else the best of :func:`copy_mechanisms`, or
    ``wanted`` (from $TORPOR_SAVE_MECHANISM) where it is one of them."""
    if shared_ram:
        return SHARED_RAM
    usable = copy_mechanisms(capability_names, path)
    return wanted if wanted in usable else usable[0]


def by_save_mode(capability_names: set[str], wanted: str | None = None) -> dict[str, str]:
    """The mechanism each saveMode uses with a QEMU that has these capabilities."""
    return {"copy": choose(capability_names, False, Path("state"), wanted), "instant": SHARED_RAM}


def setup_commands(mechanism: str, known: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """The QMP commands that set QEMU's capabilities and parameters for ``mechanism``.

    Saving and restoring QEMU must agree on them.  Every capability torpor uses is set, on or off (those this
    QEMU knows): a QEMU that restored one way (or took a snapshot) may save another way later.
    """
    caps = {
        # RAM in a shared memory-backend-file is not copied: it stays in its file.
        "x-ignore-shared": mechanism == SHARED_RAM,
        "mapped-ram": mechanism == MAPPED_RAM,
        "multifd": mechanism in (MAPPED_RAM, MULTIFD),
        # MIGRATION events: "completed" arrives before QEMU has synced and closed the state (migration.save).
        "events": True,
    }
    out: list[tuple[str, dict[str, Any]]] = []
    if mechanism == MAPPED_RAM:
        # Zero pages found by the migration thread, not by the multifd threads (QEMU 9.0+, as mapped-ram): the
        # threads then get only pages to write, not every page of guest RAM to look at.  Saving a 4 GiB guest
        # with 200 MiB of data here (QEMU 10.0, 2 channels, 5 runs each): 0.52-0.55 s instead of 0.90-1.19 s;
        # 1 GiB: 0.35-0.37 s instead of 0.32-0.62 s.
        params = {"multifd-channels": multifd_channels(), "zero-page-detection": "legacy"}
        out.append(("migrate-set-parameters", params))
    elif mechanism == MULTIFD:
        out.append(("migrate-set-parameters", {"multifd-channels": multifd_channels()}))
    out.append(
        (
            "migrate-set-capabilities",
            {"capabilities": [{"capability": k, "state": v} for k, v in caps.items() if k in known]},
        )
    )
    return out


Position = Callable[[], tuple[int, int]]  # how far a load is: bytes read, bytes in all

# Where a load stands (load_outcome).
LOADING, LOADED, FAILED = "loading", "loaded", "failed"


def load_outcome(run_status: str, migration_status: str | None) -> str:
    """Where a restoring QEMU's load stands, from its run status (query-status) and, once that has left
    "inmigrate", its migration status (query-migrate): LOADING, LOADED (the VM may run) or FAILED.

    A `cont` sent while QEMU is still "inmigrate" is accepted and ignored, so the VM is let run only once the
    run status has moved on; the migration status then tells a load that failed.  Both restore paths, the
    early one (synchronous) and the driver's (asyncio), follow this rule.
    """
    if run_status == "inmigrate":
        return LOADING
    return FAILED if migration_status == "failed" else LOADED


def stream_position(fd: int, total: int) -> Position:
    """A stream's load position: the offset of ``fd``, the descriptor QEMU reads the state from (its copy of the
    descriptor shares the offset)."""
    return lambda: (os.lseek(fd, 0, os.SEEK_CUR), total)


def incoming_uri(mechanism: str, path: Path, relay_socket: Path) -> str:
    """Where a restoring QEMU reads the state: the file itself (mapped-ram), a socket the relay connects to
    (multifd), else a passed descriptor."""
    if mechanism == MAPPED_RAM:
        return f"file:{path}"
    return f"unix:{relay_socket}" if mechanism == MULTIFD else f"fd:{FD_NAME}"
