"""Every save mechanism torpor may pick, with each kind of QEMU it supports: the installed one (QEMU 10 from
bookworm-backports after setup.sh: mapped-ram + multifd) and Debian 12's own QEMU 7.2 (multifd channels through
torpor's relay); and the plain stream, which torpor picks for a QEMU without multifd (none here: chosen through
$TORPOR_SAVE_MECHANISM) and reads back for states saved that way by an earlier torpor.
Each proves that memory (a running process and data only guest RAM holds) and disk data survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, Torpor, write_template
from tests.integration.qemus import debian12_qemu
from torpor.driver.qemu import mechanisms
from torpor.store import savedstate

pytestmark = pytest.mark.integration


def system_qemu_has_mapped_ram() -> bool:
    from torpor.driver.qemu import host

    return "mapped-ram" in host.migration_capabilities(host.find_qemu())


def started(torpor: Torpor, qemu: str, save_mode: str) -> int:
    """Instance "m" running in ``save_mode``; return its RAM in MiB."""
    mib = {"copy": 512, "instant": 1024}[save_mode]
    body = "saveMode: instant\n" if save_mode == "instant" else ""
    if qemu == "debian12":  # booted by that QEMU (a state saved by another QEMU is not restored by it)
        torpor.run("create", str(write_template(torpor, "m", body, memory=f"{mib}MiB")))
    else:
        torpor.from_saved("m", body, memory=f"{mib}MiB")
    torpor.run("start", "m")
    return mib


@pytest.mark.parametrize(
    ("qemu", "save_mode"),
    [(q, m) for q in ("installed", "debian12") for m in ("copy", "instant")] + [("stream", "copy")],
)
def test_mechanism_keeps_memory_and_disk(torpor: Torpor, image_cache: Path, qemu: str, save_mode: str) -> None:
    if qemu == "stream":  # the installed QEMU
        torpor.env[mechanisms.CHOICE_ENV] = expected = "stream"
    elif qemu == "debian12":
        torpor.env["TORPOR_QEMU"] = str(debian12_qemu(image_cache))
        expected = {"copy": "multifd", "instant": "shared-ram"}[save_mode]
    else:
        copy = "mapped-ram" if system_qemu_has_mapped_ram() else "multifd"
        expected = {"copy": copy, "instant": "shared-ram"}[save_mode]
    version = json.loads(torpor.run("info", "--format", "json").stdout)
    assert version["saveModes"][save_mode] == expected
    if qemu == "debian12":
        assert version["qemu"]["version"].startswith("7.2")

    mib = started(torpor, qemu, save_mode)
    torpor.sh("m", COUNTER)
    torpor.sh("m", "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=48 2>/dev/null")
    blob = torpor.sh("m", "md5sum < /dev/shm/blob")
    pid = torpor.sh("m", "cat /dev/shm/counter.pid")
    torpor.sh("m", "dd if=/dev/urandom of=$HOME/disk.bin bs=1M count=8 2>/dev/null && sync")
    on_disk = torpor.sh("m", "md5sum < $HOME/disk.bin")

    torpor.run("stop", "--save", "m")
    row = torpor.status("m")
    assert row["status"] == "Saved" and row["saveMechanism"] == expected
    state = torpor.dir("m") / "saved" / "state.bin"
    if expected in ("mapped-ram", "multifd"):
        # RAM pages at fixed offsets, or each channel in a region that could hold all of RAM: the file is larger
        # than the guest's RAM but only what the guest touched is allocated.
        assert state.stat().st_size >= mib * 2**20
        assert state.stat().st_blocks * 512 < state.stat().st_size // 2
        assert row["stateSize"] == state.stat().st_blocks * 512
    elif expected == "shared-ram":
        assert state.stat().st_size < 8 * 2**20  # device state only
    else:  # a stream: RAM pages one after another, a zero page in a few bytes
        assert 48 * 2**20 < state.stat().st_size < mib * 2**20 // 2

    # The state file put back from a copy (a backup restored, say): its identity changed, so its digest, taken
    # as the save finished, is verified against the contents: they match, and it restores.
    backup = state.with_name("backup.bin")
    savedstate.sparse_copy(state, backup)
    backup.replace(state)
    out = torpor.run("start", "m")
    assert "restored in" in out.stderr, out.stderr
    assert "verifying its digest" in (torpor.dir("m") / "ha.stderr.log").read_text()
    assert torpor.sh("m", "cat /dev/shm/counter.pid") == pid
    assert torpor.sh("m", "md5sum < /dev/shm/blob") == blob
    assert torpor.sh("m", "md5sum < $HOME/disk.bin") == on_disk
    n = int(torpor.sh("m", "cat /dev/shm/counter"))
    assert int(torpor.sh("m", "sleep 0.5; cat /dev/shm/counter")) > n  # the process runs on

    if qemu == "debian12" and save_mode == "copy":
        snapshot_then_another_qemu(torpor, blob, on_disk)
    torpor.run("stop", "m")


def snapshot_then_another_qemu(torpor: Torpor, blob: str, on_disk: str) -> None:
    """QEMU 7.2's copy mode, on from the restored VM: a snapshot through the relay, then another QEMU."""
    # A snapshot of the running VM goes through the relay too, and brings memory back when applied.
    torpor.run("snapshot", "create", "m", "--tag", "t")
    assert torpor.run("snapshot", "list", "m", "--format", "json").stdout.count('"multifd"') == 1
    torpor.sh("m", "rm /dev/shm/blob")
    torpor.run("snapshot", "apply", "m", "--tag", "t", "--force")
    assert torpor.sh("m", "md5sum < /dev/shm/blob") == blob
    torpor.run("snapshot", "delete", "m", "--tag", "t")

    # A state saved by one QEMU is not restored by another (the upgrade to backports' QEMU, say): the start
    # says why and cold boots, and the disk is intact.
    torpor.run("stop", "--save", "m")
    del torpor.env["TORPOR_QEMU"]
    out = torpor.run("start", "m")
    assert "QEMU changed since the save" in out.stderr and "restored in" not in out.stderr, out.stderr
    assert torpor.sh("m", "md5sum < $HOME/disk.bin") == on_disk
    assert torpor.sh("m", "test -e /dev/shm/blob || echo gone").strip() == "gone"
