"""Stop an instance: SIGINT to its host agent and wait for the agent's exit event; or force it off."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from torpor.errors import HostAgentError, InstanceStateError
from torpor.hostagent import events
from torpor.hostagent.client import HostAgentClient
from torpor.instance import spawn
from torpor.store import filenames, lock
from torpor.store.instance import (
    Instance,
    Status,
    clear_runtime_files,
    home,
    inspect,
    pid_alive,
)

Report = Callable[[str], None]
STOP_MARGIN = 30.0  # beyond the guest's shutdownTimeout: QEMU quit and the agent's cleanup
EXIT_WAIT = 10.0  # for the agent to let go of its pid lock once it has reported its exit
RELEASE_POLL = 0.001  # it does within a few ms: a stop --save waits for nothing else


def stop(
    name: str, report: Report, save: bool | None = None, progress: Report | None = None, root: Path | None = None
) -> events.Event:
    """Stop ``name``; return the host agent's exit event.

    ``save`` True or False overrides the instance's saveOnStop for this stop (set in the running host agent, then
    SIGINT, so that the agent alone decides what a stop signal does); None follows the setting.
    """
    root = root or home()
    inst = inspect(name, root)
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {name!r}"):
        inst = inspect(name, root)
        pid = _running_agent(inst)
        timeout = _shutdown_timeout(inst, root) + STOP_MARGIN
        reader = events.EventReader.at_end(inst.dir / filenames.HA_STDOUT)

        def show(ev: events.Event) -> None:
            if ev.type in (events.STOPPING, events.NOTICE):
                report(ev.message)
            elif ev.type == events.PROGRESS and progress is not None:
                progress(ev.message)

        if save is not None:
            HostAgentClient(inst.dir / filenames.HA_SOCK).call("PATCH", "/v1/driver/config", {"saveOnStop": save})
        os.kill(pid, signal.SIGINT)
        # A save takes as long as it takes to write the guest's memory: each progress event renews the timeout.
        last = spawn.follow(
            reader,
            alive=lambda: pid_alive(pid),
            until=lambda ev: False,
            on_event=show,
            timeout=timeout,
            extends=lambda ev: ev.type == events.PROGRESS,
        )
        # The agent reports before it has closed its socket and let go of its pid lock: a start straight after
        # this stop must find the instance stopped, not a half-gone agent ("not answering on ha.sock").
        if last is not None:
            _wait_released(inst.dir / filenames.HA_PID, EXIT_WAIT)
    if last is None:
        if pid_alive(pid):
            raise HostAgentError(
                f"instance {name!r} did not stop: no progress for {timeout:.0f} s",
                hint=f"`torpor stop --force {name}` turns it off at once",
            )
        raise HostAgentError(
            f"the host agent of {name!r} exited without reporting how the stop went",
            hint=f"see {inst.dir / filenames.HA_STDERR}",
        )
    return last


def _running_agent(inst: Instance) -> int:
    """The pid of the host agent to signal; a clear error if the instance is not running."""
    name = inst.name
    if inst.status is Status.STOPPED:
        raise InstanceStateError(f"instance {name!r} is not running")
    if inst.status is Status.SAVED:
        raise InstanceStateError(
            f"instance {name!r} is saved, not running",
            hint=f"`torpor start {name}` restores it, `torpor start --cold {name}` discards the saved state",
        )
    if inst.agent_pid is None:
        raise InstanceStateError(
            f"instance {name!r} is broken: {inst.reason}",
            hint=f"`torpor stop --force {name}` cleans up, `torpor start {name}` starts it again",
        )
    return inst.agent_pid


def _wait_released(pid_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while lock.is_locked(pid_file) and time.monotonic() < deadline:
        time.sleep(RELEASE_POLL)


def _shutdown_timeout(inst: Instance, root: Path) -> float:
    """The running VM's shutdownTimeout, from its boot record (the YAML may have been edited since)."""
    try:
        boot = json.loads((inst.dir / filenames.BOOT_RECORD).read_text())
        return float(boot["config"]["shutdownTimeout"])
    except (OSError, ValueError, KeyError, TypeError):
        return 60.0


def force_stop(name: str, report: Report, root: Path | None = None) -> None:
    """Kill the host agent and QEMU at once and clear their runtime files.  Never saves anything."""
    root = root or home()
    inst = inspect(name, root)
    killed = []
    if inst.agent_pid is not None and spawn.kill_and_wait(inst.agent_pid):
        killed.append(f"host agent (pid {inst.agent_pid})")
    # QEMU dies with its agent (PDEATHSIG), but an orphan from an older crash may remain; and a QEMU that is
    # dying still holds its disk's lock until it is gone (tearing down a large guest's RAM takes a while), so
    # the pid known before the agent was killed is waited for too.
    for qemu_pid in {p for p in (inst.qemu_pid, inspect(name, root).qemu_pid) if p is not None}:
        if spawn.kill_and_wait(qemu_pid):
            killed.append(f"QEMU (pid {qemu_pid})")
    removed = clear_runtime_files(inst.dir)
    if killed:
        report(f"killed {' and '.join(killed)}")
    elif not removed:
        raise InstanceStateError(f"instance {name!r} is not running")
