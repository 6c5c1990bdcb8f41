"""Running a host agent: the early steps first, then the agent proper (imported only then)."""

from __future__ import annotations

import sys

from torpor.hostagent import early, events
from torpor.store.instance import home, instance_dir


def run(name: str) -> int:
    inst_dir = instance_dir(name)
    try:
        begun = early.begin(name, inst_dir)
    except early.AlreadyRunning as e:
        events.EventWriter(sys.stdout).emit(events.EXITING, str(e), ok=False)
        return 3
    from torpor.hostagent.agent import main

    return main(name, inst_dir, home(), begun)
