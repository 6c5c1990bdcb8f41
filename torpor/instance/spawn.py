"""Spawning the host agent, following its event stream, and killing what is left of it."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from torpor.hostagent.events import EXITING, Event, EventReader
from torpor.store import filenames

TYPE_CHECKING = False  # not typing's (see hostagent/events.py)
if TYPE_CHECKING:
    import subprocess

POLL = 0.005


def spawn_hostagent(name: str, inst_dir: Path, home: Path) -> subprocess.Popen[bytes]:
    """Start ``torpor hostagent NAME`` detached (own session), events to ha.stdout.log, log to ha.stderr.log."""
    from torpor import subp  # here: `torpor stop` imports this module, and subprocess is a tenth of its imports

    with (inst_dir / filenames.HA_STDOUT).open("wb") as out, (inst_dir / filenames.HA_STDERR).open("wb") as err:
        return subp.spawn(
            [sys.executable, "-m", "torpor.hostagent", name],
            stdout=out,
            stderr=err,
            env={"TORPOR_HOME": str(home)},
            cwd=inst_dir,
            dies_with_parent=False,
            session=True,
        )


def follow(
    reader: EventReader,
    alive: Callable[[], bool],
    until: Callable[[Event], bool],
    on_event: Callable[[Event], None],
    timeout: float,
    *,
    extends: Callable[[Event], bool] = lambda ev: False,
) -> Event | None:
    """Pass events to ``on_event`` until one satisfies ``until`` (returned), the agent dies or time runs out (None).

    An event that ``extends`` (progress, say) gives the agent ``timeout`` seconds again from then.
    """
    deadline = time.monotonic() + timeout
    while True:
        for ev in reader.read():
            on_event(ev)
            if until(ev) or ev.type == EXITING:
                return ev
            if extends(ev):
                deadline = time.monotonic() + timeout
        if not alive():
            for ev in reader.read():  # what it wrote just before dying
                on_event(ev)
                if until(ev) or ev.type == EXITING:
                    return ev
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def kill_and_wait(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL ``pid`` and wait until it is gone; return whether it went.

    Gone means every thread of it: a QEMU whose main thread is already a zombie may still have threads tearing
    down, and it keeps its files (and the disk image's lock) until the last one exits.  A pidfd becomes readable
    only then.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)
