"""subp.spawn_daemon: the long-lived children's process settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from torpor import subp


def thp_enabled(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("THP_enabled:"))


@pytest.mark.parametrize("huge_pages", [True, False])
def test_huge_pages_setting_reaches_the_child_through_exec(huge_pages: bool) -> None:
    if thp_enabled(1) != "1":
        pytest.skip("transparent huge pages are off for processes here")
    # Through a shell that execs, as QEMU is run through a wrapper script: the setting is kept across exec.
    child = subp.spawn_daemon(["sh", "-c", "exec sleep 30"], huge_pages=huge_pages)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "the shell did not exec sleep"
            time.sleep(0.005)
        assert thp_enabled(child.pid) == ("1" if huge_pages else "0")
    finally:
        child.kill()
        child.wait()
        assert child.stderr is not None
        child.stderr.close()
