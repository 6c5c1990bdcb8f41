"""Faults around save and restore: each ends in a correct restore or a clean cold boot with a clear message,
and data the guest fsynced before the stop is never lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, FILL, Torpor, wait_for
from torpor.store.instance import pid_alive

pytestmark = pytest.mark.integration


def started_with_data(torpor: Torpor, name: str, body: str = "", fill: bool = False) -> None:
    """``name`` running (restored from a saved guest), a counter running in it, a file fsynced to its disk; with
    ``fill``, random data in its RAM that makes a save take long enough to interrupt."""
    torpor.from_saved(name, body, memory="1GiB" if fill else "512MiB", prepare=FILL if fill else "")
    torpor.run("start", name)
    torpor.sh(name, COUNTER)
    torpor.sh(name, "echo precious > $HOME/fsynced && sync")


def assert_restored_or_cold(torpor: Torpor, name: str, out: subprocess.CompletedProcess[str]) -> str:
    assert torpor.status(name)["status"] == "Running"
    assert torpor.sh(name, "cat $HOME/fsynced") == "precious\n"
    if "restored in" in out.stderr:
        assert torpor.sh(name, "cat /dev/shm/counter.pid") != ""
        return "restored"
    assert "ready in" in out.stderr
    return "cold"


def wait_for_event(torpor: Torpor, name: str, text: str, timeout: float = 30) -> None:
    assert wait_for(lambda: text in torpor.events(name), timeout=timeout, interval=0.005), text


@pytest.mark.parametrize("victim", ["hostagent", "qemu"])
def test_kill_during_save(torpor: Torpor, victim: str) -> None:
    name = f"k{victim[0]}"
    started_with_data(torpor, name, fill=True)
    d = torpor.dir(name)
    pid = int((d / ("ha.pid" if victim == "hostagent" else "qemu.pid")).read_text())
    stopper = threading.Thread(target=lambda: torpor.run("stop", "--save", name, check=False))
    stopper.start()
    wait_for_event(torpor, name, "saving the VM state")
    os.kill(pid, signal.SIGKILL)
    stopper.join(120)
    agent = int((d / "ha.pid").read_text()) if (d / "ha.pid").exists() else None
    assert agent is None or wait_for(lambda: not pid_alive(agent), timeout=60)
    # Nothing half-written may look like a complete save.
    assert torpor.status(name)["status"] in ("Stopped", "Broken", "Saved")
    out = torpor.run("start", name)
    outcome = assert_restored_or_cold(torpor, name, out)
    if outcome == "cold":
        assert "not restoring the saved state" in out.stderr or not any(d.glob("saved.failed-*")), out.stderr


def test_full_filesystem_during_save_shuts_down_cleanly(torpor: Torpor) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    started_with_data(torpor, "full", fill=True)
    saved = torpor.dir("full") / "saved"
    saved.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(saved)], check=True)
    try:
        out = torpor.run("stop", "--save", "full", check=False)
        assert out.returncode == 1, out.stderr  # stopped, but not saved as asked
        assert "shutting the guest down instead" in out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert "stopped: the guest shut down" in last and "the VM state was NOT saved" in last, out.stderr
        assert torpor.status("full")["status"] == "Stopped"
        assert list(saved.iterdir()) == []  # nothing half-written left where a restore could find it
        out = torpor.run("start", "full")
        assert assert_restored_or_cold(torpor, "full", out) == "cold"
    finally:
        torpor.run("stop", "--force", "full", check=False)
        subprocess.run(["umount", str(saved)], check=False)


def damage_and_start(torpor: Torpor, name: str, damage: str) -> subprocess.CompletedProcess[str]:
    started_with_data(torpor, name)
    torpor.run("stop", "--save", name)
    d = torpor.dir(name)
    if damage == "flip":  # same size, other contents: only the digest, checked while QEMU loads, can tell
        state = d / "saved" / "state.bin"
        with state.open("r+b") as f:
            f.seek(state.stat().st_size // 2)
            f.write(b"\xa5" * 4096)
    elif damage == "truncate":
        with (d / "saved" / "state.bin").open("r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
    elif damage == "manifest":
        path = d / "saved" / "manifest.json"
        data = bytearray(path.read_bytes())
        i = data.index(b'"createdAt": ') + len(b'"createdAt": ') + 2
        data[i] = ord("0") if data[i] != ord("0") else ord("1")
        path.write_bytes(bytes(data))
    elif damage == "disk":
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 3G 64k", str(d / "disk.qcow2")],
            check=True,
            capture_output=True,
        )
    return torpor.run("start", name)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip", "checksum mismatch"),
        ("truncate", "the state file is"),
        ("manifest", "manifest is damaged"),
        ("disk", "the disk changed since the save"),
    ],
)
def test_damaged_state_cold_boots_with_reason(torpor: Torpor, damage: str, message: str) -> None:
    name = f"d{damage[0]}"
    out = damage_and_start(torpor, name, damage)
    assert message in out.stderr and "cold booting" in out.stderr
    assert assert_restored_or_cold(torpor, name, out) == "cold"
    kept = list(torpor.dir(name).glob("saved.failed-*"))
    assert kept and (kept[0] / "state.bin").exists()  # kept aside for diagnosis


def test_config_change_without_tty_restores_and_warns(torpor: Torpor) -> None:
    started_with_data(torpor, "cfg", "cpus: 2\n")
    torpor.run("stop", "--save", "cfg")
    yaml = torpor.dir("cfg") / "torpor.yaml"
    yaml.write_text(yaml.read_text().replace("cpus: 2", "cpus: 1"))
    out = torpor.run("start", "cfg")
    assert "restored in" in out.stderr
    assert "configuration changed since the save (cpus)" in out.stderr
    assert torpor.sh("cfg", "nproc").strip() == "2"  # the running VM keeps the config it was booted with
    torpor.run("restart", "cfg")
    assert torpor.sh("cfg", "nproc").strip() == "1"


def test_config_change_with_tty_can_discard(torpor: Torpor) -> None:
    started_with_data(torpor, "cft", "cpus: 2\n")

    def tty_start(answer: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "torpor", "--tty", "start", "cft"],
            input=answer,
            env=dict(torpor.env, **env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    # Unchanged files: nothing to ask, and neither the CLI nor the host agent validates them again (with
    # PYTHONPROFILEIMPORTTIME both list every module they import on their stderr: pydantic must not be one).
    torpor.run("stop", "--save", "cft")
    proc = tty_start("", PYTHONPROFILEIMPORTTIME="1")
    assert proc.returncode == 0, proc.stderr
    assert "restored in" in proc.stderr and "changed since" not in proc.stdout + proc.stderr
    agent_log = (torpor.dir("cft") / "ha.stderr.log").read_text()
    assert "configuration files are unchanged since the boot" in agent_log
    assert "import time:" in agent_log and "import time:" in proc.stderr  # both lists are there
    assert "pydantic" not in agent_log and "pydantic" not in proc.stderr

    torpor.run("stop", "--save", "cft")
    yaml = torpor.dir("cft") / "torpor.yaml"
    yaml.write_text(yaml.read_text().replace("cpus: 2", "cpus: 1"))
    proc = tty_start("d\n")
    assert proc.returncode == 0, proc.stderr
    assert "changed since its state was saved (cpus)" in proc.stdout + proc.stderr
    assert "discarded the saved state" in proc.stderr and "ready in" in proc.stderr
    assert torpor.sh("cft", "nproc").strip() == "1"
    assert torpor.sh("cft", "cat $HOME/fsynced") == "precious\n"


def test_two_concurrent_starts_restore_once(torpor: Torpor) -> None:
    started_with_data(torpor, "cc")
    pid = torpor.sh("cc", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "cc")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torpor", "--no-tty", "start", "cc"],
            env=torpor.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert "busy" in loser or "already running" in loser
    assert torpor.sh("cc", "cat /dev/shm/counter.pid") == pid
    assert torpor.sh("cc", "cat $HOME/fsynced") == "precious\n"


def test_interrupted_save_leftovers_are_not_restored(torpor: Torpor) -> None:
    started_with_data(torpor, "il")
    torpor.run("stop", "il")
    leftover = torpor.dir("il") / "saved"
    leftover.mkdir()
    (leftover / "state.bin.tmp").write_bytes(b"\0" * 4096)
    assert torpor.status("il")["status"] == "Stopped"
    out = torpor.run("start", "il")
    assert "interrupted" in out.stderr
    assert assert_restored_or_cold(torpor, "il", out) == "cold"
    assert Path(next(torpor.dir("il").glob("saved.failed-*")) / "state.bin.tmp").exists()
