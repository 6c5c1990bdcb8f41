"""The machine an instance's configuration describes: the fields QEMU's machine and a saved state depend on.

Read from a configuration's JSON record (a boot record's, a snapshot's), not from the pydantic model: the
restore path builds its driver from it without importing the schema.
"""

from __future__ import annotations

import platform
from typing import Any, NamedTuple

# The configuration fields the machine is made of: a saved state or memory snapshot taken with other values no
# longer fits the machine QEMU would build.
FIELDS = ("arch", "cpus", "memory", "saveMode")


def host_arch() -> str:
    """The host's architecture in Lima's names (``arm64`` is ``aarch64``): the default ``arch``."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


class Machine(NamedTuple):  # records on the restore path are not dataclasses (a 5 ms import)
    arch: str
    cpus: int
    memory: int  # bytes
    save_mode: str  # "copy" or "instant"

    @classmethod
    def of(cls, config: dict[str, Any]) -> Machine:
        """The machine of a configuration's JSON record (validated by the schema when it was written)."""
        return cls(str(config["arch"]), int(config["cpus"]), int(config["memory"]), str(config["saveMode"]))


def changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the machine of configuration ``now`` differs from that of ``then`` ("memory 1073741824 -> ...")."""
    return [f"{k} {then.get(k)} -> {now.get(k)}" for k in FIELDS if then.get(k) != now.get(k)]
