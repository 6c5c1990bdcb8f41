"""How long the autostart unit lets the host agent stop at logout before systemd kills it (and the VM)."""

from pathlib import Path

from torpor.config.layering import load_effective
from torpor.instance import autostart

BASE = "images: [{location: build:default}]\n"


def test_the_stop_timeout_allows_for_a_save_of_all_the_guest_memory(tmp_path: Path) -> None:
    small = load_effective(tmp_path, BASE + "memory: 1GiB\nshutdownTimeout: 30\n", "i.yaml").config
    big = load_effective(tmp_path, BASE + "memory: 16GiB\nshutdownTimeout: 30\n", "i.yaml").config
    # 1 GiB written at 100 MB/s: 11 s; 16 GiB: 172 s; then the 30 s shutdown and the 60 s margin.
    assert autostart.stop_timeout(small) == 11 + 30 + 60
    assert autostart.stop_timeout(big) == 172 + 30 + 60
    assert "TimeoutStopSec=262\n" in autostart.unit_text("vm", tmp_path, "python3", autostart.stop_timeout(big))
