"""Named snapshots with the real guest: memory and disk together, applied again and again."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import COUNTER, Torpor, serves, wait_for
from torpor.guest.ssh import free_port

pytestmark = pytest.mark.integration

# What a test reads back: a process (its pid), data only RAM holds, and a file on the disk.
STATE = "cat /dev/shm/counter.pid; cat /dev/shm/token; cat $HOME/file"


def snapshot_rows(torpor: Torpor, name: str) -> dict[str, dict[str, object]]:
    out = torpor.run("snapshot", "list", name, "--format", "json").stdout
    return {row["tag"]: row for row in map(json.loads, out.splitlines())}


def set_token(torpor: Torpor, name: str, value: str) -> None:
    torpor.sh(name, f"echo {value} > /dev/shm/token; echo {value} > $HOME/file; sync")


def test_running_snapshot_applies_again_and_again(torpor: Torpor) -> None:
    torpor.from_saved("sn")
    torpor.run("start", "sn")
    torpor.sh("sn", COUNTER)
    set_token(torpor, "sn", "at-snapshot")
    at_snapshot = torpor.sh("sn", STATE)
    count_at_snapshot = int(torpor.sh("sn", "cat /dev/shm/counter"))

    out = torpor.run("snapshot", "create", "sn", "--tag", "base")
    assert "VM paused" in out.stderr
    row = snapshot_rows(torpor, "sn")["base"]
    assert row["memory"] is True and int(str(row["size"])) > 0 and float(str(row["createdAt"])) <= time.time()
    assert torpor.status("sn")["status"] == "Running"  # the guest runs on after the snapshot

    for round_ in (1, 2):  # the same starting point, twice
        set_token(torpor, "sn", f"changed-{round_}")
        time.sleep(1)
        assert torpor.sh("sn", STATE) != at_snapshot
        port = free_port()
        out = torpor.run("snapshot", "apply", "sn", "--tag", "base", "--force")
        assert "restored in" in out.stderr, out.stderr
        assert torpor.sh("sn", STATE) == at_snapshot
        count = int(torpor.sh("sn", "cat /dev/shm/counter"))
        assert count_at_snapshot <= count < count_at_snapshot + 50  # counting on from the snapshot's value
        assert abs(int(torpor.sh("sn", "date +%s")) - time.time()) <= 2  # the clock is set as after a restore
        torpor.sh(
            "sn",
            f"mkdir -p /tmp/w && echo web > /tmp/w/index.html && "
            f"busybox httpd -f -p {port} -h /tmp/w </dev/null >/dev/null 2>&1 &",
        )
        assert wait_for(lambda p=port: serves(p, "web\n"))  # port forwards work again

    # Without a terminal to ask on, apply needs --force; a missing tag is a clear error; neither changes anything.
    set_token(torpor, "sn", "current")
    current = torpor.sh("sn", STATE)
    out = torpor.run("snapshot", "apply", "sn", "--tag", "base", check=False)
    assert out.returncode != 0 and "--force" in out.stderr
    out = torpor.run("snapshot", "apply", "sn", "--tag", "nope", "--force", check=False)
    assert out.returncode != 0 and "has no snapshot 'nope'" in out.stderr and "snapshot list" in out.stderr
    assert torpor.sh("sn", STATE) == current

    # A corrupt snapshot is refused before anything is touched: the running VM keeps its state.
    torpor.run("snapshot", "create", "sn", "--tag", "bad")
    state = torpor.dir("sn") / "snapshots" / "bad" / "state.bin"
    with state.open("r+b") as f:
        f.seek(state.stat().st_size // 2)
        f.write(b"\xff" * 64)
    out = torpor.run("snapshot", "apply", "sn", "--tag", "bad", "--force", check=False)
    assert out.returncode != 0 and "damaged" in out.stderr and "nothing was changed" in out.stderr
    assert torpor.sh("sn", STATE) == current

    # A snapshot that no longer fits the machine is refused with the reason.
    yaml = torpor.dir("sn") / "torpor.yaml"
    yaml.write_text(yaml.read_text().replace("memory: 512MiB", "memory: 1GiB"))
    out = torpor.run("snapshot", "apply", "sn", "--tag", "base", "--force", check=False)
    assert out.returncode != 0 and "machine changed" in out.stderr and "memory" in out.stderr
    assert torpor.sh("sn", STATE) == current


def test_snapshots_of_stopped_and_saved_instances_and_their_lifetime(torpor: Torpor) -> None:
    torpor.from_saved("st")
    torpor.run("start", "st")
    torpor.sh("st", COUNTER)
    set_token(torpor, "st", "live")
    live = torpor.sh("st", STATE)
    torpor.run("snapshot", "create", "st", "--tag", "live")

    # Saving and restoring keeps the snapshots.
    torpor.run("stop", "--save", "st")
    # A saved instance's snapshot holds its memory too (the saved state, hard-linked).
    torpor.run("snapshot", "create", "st", "--tag", "saved")
    assert snapshot_rows(torpor, "st")["saved"]["memory"] is True
    out = torpor.run("start", "st")
    assert "restored in" in out.stderr, out.stderr  # the snapshot did not spoil the saved state
    assert set(snapshot_rows(torpor, "st")) == {"live", "saved"}

    # A stopped instance: a snapshot of its disk.
    set_token(torpor, "st", "disk-only")
    torpor.run("stop", "st")
    torpor.run("snapshot", "create", "st", "--tag", "disk")
    assert snapshot_rows(torpor, "st")["disk"]["memory"] is False
    torpor.run("start", "st")
    assert "live" in snapshot_rows(torpor, "st")  # and stop/start keeps them
    torpor.sh("st", "echo later > $HOME/file; sync")
    torpor.run("stop", "st")
    out = torpor.run("snapshot", "apply", "st", "--tag", "disk", "--force")
    assert torpor.status("st")["status"] == "Stopped"  # a disk snapshot brings back the disk, not a running VM
    torpor.run("start", "st")
    assert torpor.sh("st", "cat $HOME/file").strip() == "disk-only"

    # A memory snapshot applied to a running instance brings back the running VM of that moment.
    torpor.run("snapshot", "apply", "st", "--tag", "live", "--force")
    assert torpor.sh("st", STATE) == live
    torpor.run("snapshot", "apply", "st", "--tag", "saved", "--force")
    assert torpor.sh("st", STATE) == live  # the saved state was taken after "live" with nothing changed

    torpor.run("snapshot", "delete", "st", "--tag", "live")
    assert "live" not in snapshot_rows(torpor, "st")
    out = torpor.run("snapshot", "delete", "st", "--tag", "live", check=False)
    assert out.returncode != 0 and "no snapshot 'live'" in out.stderr
    torpor.run("stop", "st")
    torpor.run("snapshot", "delete", "st", "--tag", "disk")
    assert set(snapshot_rows(torpor, "st")) == {"saved"}
    torpor.run("delete", "st")
    assert not torpor.dir("st").exists()


def test_instant_mode_snapshot_copies_the_ram_file(torpor: Torpor) -> None:
    torpor.from_saved("ins", "saveMode: instant\n", memory="1GiB")
    torpor.run("start", "ins")
    torpor.sh("ins", COUNTER)
    torpor.sh("ins", "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=32 2>/dev/null")
    set_token(torpor, "ins", "at-snapshot")
    at_snapshot = torpor.sh("ins", STATE + "; md5sum < /dev/shm/blob")
    torpor.run("snapshot", "create", "ins", "--tag", "i")
    d = torpor.dir("ins") / "snapshots" / "i"
    # Devices in the state file, the RAM as a sparse copy of the RAM file (1 GiB apparent, far less allocated).
    assert (d / "state.bin").stat().st_size < 8 * 2**20
    assert (d / "memory.ram").stat().st_size == 2**30
    assert (d / "memory.ram").stat().st_blocks * 512 < 2**29

    torpor.sh("ins", "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=32 2>/dev/null")
    set_token(torpor, "ins", "changed")
    torpor.run("snapshot", "apply", "ins", "--tag", "i", "--force")
    assert torpor.sh("ins", STATE + "; md5sum < /dev/shm/blob") == at_snapshot
    # The instance's RAM file is its own again: saving and restoring it works as before.
    torpor.run("stop", "--save", "ins")
    out = torpor.run("start", "ins")
    assert "restored in" in out.stderr, out.stderr
    assert torpor.sh("ins", STATE + "; md5sum < /dev/shm/blob") == at_snapshot
    # A saved instance's snapshot takes its RAM file too, and brings it back.
    torpor.run("stop", "--save", "ins")
    torpor.run("snapshot", "create", "ins", "--tag", "saved")
    assert (torpor.dir("ins") / "snapshots" / "saved" / "memory.ram").exists()
    torpor.run("start", "ins")
    set_token(torpor, "ins", "changed-again")
    torpor.run("snapshot", "apply", "ins", "--tag", "saved", "--force")
    assert torpor.sh("ins", STATE + "; md5sum < /dev/shm/blob") == at_snapshot
