"""Following a host agent's events with a timeout that progress renews (instance/spawn.follow), as `torpor stop`
waits for a save: a save takes as long as the guest's memory takes to write."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from torpor.hostagent import events
from torpor.instance import spawn


def _agent(path: Path, steps: int, interval: float) -> threading.Thread:
    """Writes a progress event every ``interval`` s, ``steps`` times, then its exit event."""

    def run() -> None:
        with path.open("a") as f:
            writer = events.EventWriter(f)
            for i in range(steps):
                time.sleep(interval)
                writer.emit(events.PROGRESS, f"saving: {i} of {steps} MiB", done=i, total=steps)
            time.sleep(interval)
            writer.emit(events.EXITING, "saved", ok=True)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _follow(path: Path, renew: bool) -> events.Event | None:
    return spawn.follow(
        events.EventReader(path),
        alive=lambda: True,
        until=lambda ev: False,
        on_event=lambda ev: None,
        timeout=0.3,
        extends=(lambda ev: ev.type == events.PROGRESS) if renew else (lambda ev: False),
    )


def test_progress_renews_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "ha.stdout.log"
    log.touch()
    agent = _agent(log, steps=8, interval=0.1)  # 0.9 s in all, never 0.3 s without an event
    ev = _follow(log, renew=True)
    agent.join()
    assert ev is not None and ev.type == events.EXITING


def test_without_renewal_the_timeout_counts_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "ha.stdout.log"
    log.touch()
    agent = _agent(log, steps=8, interval=0.1)
    t0 = time.monotonic()
    assert _follow(log, renew=False) is None
    assert time.monotonic() - t0 < 0.6
    agent.join()
