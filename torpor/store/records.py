"""The records torpor writes into an instance directory, each with one typed definition.

- the boot record (``boot.json``): how the running VM was booted; a restore of that boot needs all of it;
- a saved state's manifest (``saved/manifest.json``): the machine state it holds, how it was written, and what
  the instance's files were when it was (the disk's and RAM file's identities);
- a snapshot's record (``snapshots/TAG/snapshot.json``): the same machine state, or only the disk's.

Every record is written whole by one writer, so readers index it without defaults; a reader that finds a key
missing has a damaged or foreign record (see :func:`missing`).  The types exist for mypy only (defined under
TYPE_CHECKING): the restore path reads these records before it may import ``typing``.  What a saved state and a
snapshot share is :data:`MACHINE_STATE`; converting one into the other names the keys it keeps.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NotRequired, TypedDict

    class Qemu(TypedDict):
        binary: str
        version: str

    class BootRecord(TypedDict):
        config: dict[str, Any]  # the effective configuration, as the schema dumps it to JSON
        configDigest: str  # of that configuration (layering.Effective.digest)
        configSources: str  # the fingerprint of the files it was read from (config.sources)
        sshPort: int  # the host port forwarded to the guest's SSH (part of QEMU's command line)
        user: str
        defaultGuest: bool  # torpor's own guest, which reports ready and provisioning itself
        accel: str  # "kvm" or "tcg"

    class BootFile(BootRecord):
        argv: list[str]  # QEMU's command line

    class FileIdentity(TypedDict):
        size: int
        mtimeNs: int
        inode: int

    class WrittenIdentity(FileIdentity):
        ctimeNs: int

    class StateFile(TypedDict):
        size: int
        allocated: int
        digest: NotRequired[str]  # added once the file is complete
        identity: NotRequired[WrittenIdentity]  # a saved state's: its file as written

    class RamCopy(TypedDict):
        size: int
        allocated: int
        digest: str

    class MachineState(TypedDict):
        """What a saved state and a memory snapshot both record of the machine state they hold."""

        createdAt: float
        qemu: Qemu
        machine: str
        mechanism: str
        argv: list[str]
        boot: BootRecord
        config: dict[str, Any]
        configDigest: str
        cidataSha256: str
        state: StateFile
        qemuStats: dict[str, Any]
        mounts: list[dict[str, Any]]  # each mount's session as the VM left it (hostagent.mounts.Relay.export)
        firmware: NotRequired[dict[str, Any]]  # a disk image's firmware as driver.qemu.firmware.record pins it

    class Manifest(MachineState):
        disk: FileIdentity  # the disk the state matches
        ramFile: FileIdentity | None  # instant mode: the RAM file it pairs with
        saveSeconds: NotRequired[float]  # a save's (a snapshot put in place as a saved state has none)
        format: int
        complete: bool
        manifestDigest: str

    class SnapshotRecord(TypedDict):
        """A snapshot's record; a memory snapshot's (``memory``) is a MemorySnapshotRecord."""

        tag: str
        createdAt: float
        memory: bool
        metaDigest: NotRequired[str]  # added as it is written

    class MemorySnapshotRecord(SnapshotRecord, MachineState):
        pausedSeconds: NotRequired[float]  # taken of a running VM: how long it was paused
        seconds: NotRequired[float]
        fromSavedState: NotRequired[bool]  # taken of a saved instance (its state hard-linked)
        ram: NotRequired[RamCopy]  # instant mode: the copy of the guest's RAM file


# The keys of MachineState: what a snapshot takes from a saved state's manifest, and a manifest from a snapshot.
MACHINE_STATE = (
    "createdAt",
    "qemu",
    "machine",
    "mechanism",
    "argv",
    "boot",
    "config",
    "configDigest",
    "cidataSha256",
    "state",
    "qemuStats",
    "mounts",
)
BOOT_RECORD = ("config", "configDigest", "configSources", "sshPort", "user", "defaultGuest", "accel")


OPTIONAL_MACHINE_STATE = ("firmware",)  # (absent from the records of kernel-booted guests)


def machine_state(record: dict[str, Any]) -> dict[str, Any]:
    """The MachineState part of a manifest or a snapshot record."""
    return {k: record[k] for k in (*MACHINE_STATE, *OPTIONAL_MACHINE_STATE) if k in record}


def missing(record: object, keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` a record read from disk lacks (all of them if it is not a JSON object)."""
    if not isinstance(record, dict):
        return list(keys)
    return [k for k in keys if k not in record]
