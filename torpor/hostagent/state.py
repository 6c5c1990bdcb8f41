"""The host agent's state, which its parts (boot, stopping, routes) read and move on."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where the instance is, as far as the host agent knows."""

    STARTING = "starting"  # no VM yet
    BOOTING = "booting"  # a cold boot, until the guest is ready
    RESTORING = "restoring"  # QEMU loads a saved state: the VM has not run, the state is still good
    RESUMING = "resuming"  # the restored VM runs, the guest does not answer yet
    READY = "ready"
    STOPPING = "stopping"


class StopDuringBoot(Exception):
    """A stop was requested before the guest was ready."""
