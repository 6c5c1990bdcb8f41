"""Save on stop, restore on start, with the real default guest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, FILL, Torpor, serves, wait_for, write_template
from torpor.guest.ssh import free_port
from torpor.hostagent.client import HostAgentClient
from torpor.store.instance import pid_alive

pytestmark = pytest.mark.integration


def test_running_state_survives_save_and_restore(torpor: Torpor) -> None:
    torpor.from_saved("sr")
    torpor.run("start", "sr")
    port = free_port()
    torpor.sh("sr", COUNTER)
    torpor.sh("sr", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/token")
    torpor.sh("sr", "echo on-disk > $HOME/file && sync")
    torpor.sh(
        "sr",
        f"mkdir -p /tmp/w && echo web > /tmp/w/index.html && "
        f"busybox httpd -f -p {port} -h /tmp/w </dev/null >/dev/null 2>&1 &",
    )
    assert wait_for(lambda: serves(port, "web\n"))
    token = torpor.sh("sr", "cat /dev/shm/token")
    pid = torpor.sh("sr", "cat /dev/shm/counter.pid").strip()
    before = int(torpor.sh("sr", "cat /dev/shm/counter"))
    uptime_before, wall_before = float(torpor.sh("sr", "cut -d' ' -f1 /proc/uptime")), time.monotonic()

    out = torpor.run("stop", "--save", "sr")
    assert "saved the VM state" in out.stderr
    row = torpor.status("sr")
    assert row["status"] == "Saved" and row["saved"] is True and row["stateSize"] > 0 and row["stateAge"] >= 0
    time.sleep(8)  # the guest stands still while saved; its wall clock is set when it is restored

    out = torpor.run("start", "sr")
    assert "restored in" in out.stderr
    host_now = time.time()
    guest_now = int(torpor.sh("sr", "date +%s"))
    assert abs(guest_now - host_now) <= 2, f"guest clock off by {guest_now - host_now:.1f} s after restore"
    uptime_after, wall_after = float(torpor.sh("sr", "cut -d' ' -f1 /proc/uptime")), time.monotonic()
    # The guest did not run while saved: its uptime moved on by the seconds around the save, not the 8 s pause.
    assert (wall_after - wall_before) - (uptime_after - uptime_before) > 6
    assert torpor.sh("sr", "cat /dev/shm/counter.pid").strip() == pid
    after = int(torpor.sh("sr", "cat /dev/shm/counter"))
    assert after > before  # the same loop, still counting
    assert after < before + 60  # and it did not count while saved (8 s would be ~80 more)
    assert torpor.sh("sr", "cat /dev/shm/token") == token
    assert torpor.sh("sr", "cat $HOME/file") == "on-disk\n"
    assert wait_for(lambda: serves(port, "web\n")), "the port forward did not come back after restore"
    assert not (torpor.dir("sr") / "saved").exists()  # a restored state is never restored twice
    row = torpor.status("sr")
    assert row["status"] == "Running" and row["saved"] is False

    # plain stop with saveOnStop false shuts down and leaves no state; the next start is a cold boot
    torpor.run("stop", "sr")
    assert torpor.status("sr")["status"] == "Stopped"
    assert not (torpor.dir("sr") / "saved").exists()
    out = torpor.run("start", "sr")
    assert "ready in" in out.stderr and "restored" not in out.stderr
    assert torpor.sh("sr", "cat /dev/shm/counter 2>/dev/null || echo none").strip() == "none"
    assert torpor.sh("sr", "cat $HOME/file") == "on-disk\n"


def test_signal_saves_when_save_on_stop_is_true_and_api(torpor: Torpor) -> None:
    torpor.from_saved("sig", "saveOnStop: true\n")
    torpor.run("start", "sig")
    client = HostAgentClient(torpor.dir("sig") / "ha.sock")
    assert client.get("/v1/driver/config") == {"saveOnStop": True}
    for body, needle in [
        ({"saveOnStop": "yes"}, "true or false"),
        ({"saveOnStop": True, "cpus": 4}, "unknown field"),
        ([1], "JSON object"),
    ]:
        status, reply = client.request("PATCH", "/v1/driver/config", body)
        assert status == 400 and needle in reply["message"], (body, reply)
    status, reply = client.request("PUT", "/v1/driver/config", {"saveOnStop": True})
    assert status == 405
    assert client.get("/v1/driver/config") == {"saveOnStop": True}  # bad requests changed nothing

    refused = torpor.run("stop", "--save", "--force", "sig", check=False)
    assert refused.returncode != 0 and "cannot be combined" in refused.stderr
    assert torpor.status("sig")["status"] == "Running"

    torpor.sh("sig", COUNTER)
    pid = torpor.sh("sig", "cat /dev/shm/counter.pid")
    agent = int((torpor.dir("sig") / "ha.pid").read_text())
    os.kill(agent, signal.SIGTERM)  # what systemd sends at logout
    assert wait_for(lambda: not pid_alive(agent), timeout=60)
    assert torpor.status("sig")["status"] == "Saved"
    torpor.run("start", "sig")
    assert torpor.sh("sig", "cat /dev/shm/counter.pid") == pid

    # stop --no-save overrides saveOnStop: true for this stop only
    torpor.run("stop", "--no-save", "sig")
    assert torpor.status("sig")["status"] == "Stopped"


def test_foreground_host_agent_like_the_systemd_unit(torpor: Torpor) -> None:
    """The autostart unit runs `torpor hostagent NAME` in the foreground and stops it with SIGTERM."""
    torpor.from_saved("fg", "saveOnStop: true\n", saved=False)  # a stopped instance with its disk made

    def run_foreground() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torpor", "hostagent", "fg"],
            env=torpor.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["type"] == "ready":
                return proc
            assert ev["type"] != "exiting", ev
        raise AssertionError("the host agent exited before it was ready")

    proc = run_foreground()
    torpor.sh("fg", COUNTER)
    pid = torpor.sh("fg", "cat /dev/shm/counter.pid")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert torpor.status("fg")["status"] == "Saved"
    proc = run_foreground()
    assert torpor.sh("fg", "cat /dev/shm/counter.pid") == pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_restart_cold_boots_and_start_cold_discards(torpor: Torpor) -> None:
    torpor.from_saved("rs")
    torpor.run("start", "rs")
    torpor.sh("rs", COUNTER)
    out = torpor.run("restart", "rs")
    assert "ready in" in out.stderr
    assert torpor.sh("rs", "cat /dev/shm/counter 2>/dev/null || echo none").strip() == "none"
    torpor.run("stop", "--save", "rs")
    out = torpor.run("start", "--cold", "rs")
    assert "discarded the saved state" in out.stderr and "ready in" in out.stderr
    torpor.run("stop", "--save", "rs")
    torpor.run("delete", "rs")  # a saved instance can be deleted, state and all
    assert not torpor.dir("rs").exists()


def test_autostart_unit_is_valid_and_removable(torpor: Torpor, tmp_path: os.PathLike[str]) -> None:
    env = dict(torpor.env, XDG_CONFIG_HOME=str(tmp_path))
    torpor.env = env
    refused = torpor.run("autostart", "enable", "nope", check=False)
    assert refused.returncode != 0 and "does not exist" in refused.stderr
    torpor.run("create", str(write_template(torpor, "new", "saveOnStop: true\n")))
    refused = torpor.run("autostart", "enable", "new", check=False)
    assert refused.returncode != 0 and "never been started" in refused.stderr
    torpor.from_saved("au", "saveOnStop: true\n", saved=False)  # started and stopped before
    out = torpor.run("autostart", "enable", "au")  # systemd-analyze verify runs inside, where installed
    unit = Path(out.stdout.strip())
    text = unit.read_text()
    assert "ExecStart=" in text and "hostagent au" in text and "KillMode=mixed" in text
    assert f"TORPOR_HOME={torpor.home}" in text
    torpor.run("autostart", "disable", "au")
    assert not unit.exists()


def test_instant_mode_saves_device_state_only_and_restores(torpor: Torpor) -> None:
    torpor.from_saved("inst", "saveMode: instant\n", memory="1GiB")
    torpor.run("start", "inst")
    torpor.sh("inst", COUNTER)
    torpor.sh("inst", "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=64 2>/dev/null")
    digest = torpor.sh("inst", "md5sum /dev/shm/blob")
    pid = torpor.sh("inst", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "inst")
    d = torpor.dir("inst")
    assert (d / "saved" / "state.bin").stat().st_size < 8 * 2**20  # device state, not 64+ MiB of RAM
    manifest = json.loads((d / "saved" / "manifest.json").read_text())
    assert manifest["mechanism"] == "shared-ram"
    out = torpor.run("start", "inst")
    assert "restored in" in out.stderr
    assert torpor.sh("inst", "md5sum /dev/shm/blob") == digest
    assert torpor.sh("inst", "cat /dev/shm/counter.pid") == pid

    # The RAM file and the state are a pair: a RAM file changed in between is refused, not restored.
    torpor.run("stop", "--save", "inst")
    with (d / "memory.ram").open("r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 16)
    out = torpor.run("start", "inst")
    assert "guest RAM file changed" in out.stderr and "ready in" in out.stderr
    assert torpor.sh("inst", "cat /dev/shm/counter.pid 2>/dev/null || echo none").strip() == "none"

    # Shut down, nothing pairs with the RAM file: it goes at once, its dirty pages are never written out.
    torpor.sh("inst", "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=64 2>/dev/null")
    torpor.run("stop", "--no-save", "inst")
    assert not (d / "memory.ram").exists()


def start_and_signal_when(torpor: Torpor, name: str, log: Path, needle: str) -> str:
    """`torpor start NAME`, SIGTERM to its host agent as soon as ``log`` shows ``needle``; the start's stderr
    (the start must fail: the agent was stopped before the guest was ready), once the agent is gone."""
    log.unlink(missing_ok=True)  # what an earlier run logged is not this start's (the agent makes the log anew)
    start = subprocess.Popen(
        [sys.executable, "-m", "torpor", "--no-tty", "start", name],
        env=torpor.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: log.exists() and needle in log.read_text(), timeout=30, interval=0.002)
    agent = int((torpor.dir(name) / "ha.pid").read_text())
    os.kill(agent, signal.SIGTERM)
    _, err = start.communicate(timeout=60)
    assert start.returncode != 0, err
    assert wait_for(lambda: not pid_alive(agent), timeout=30)
    return err


def test_stop_while_restoring_keeps_the_saved_state(torpor: Torpor) -> None:
    """A SIGTERM that reaches the host agent while QEMU loads the state (the early path, before the agent's own
    handlers exist) stops it without letting the VM run: the state stays and restores later."""
    torpor.from_saved("sw", memory="1GiB", prepare=FILL)  # a longer load: time to land the signal
    torpor.run("start", "sw")
    torpor.sh("sw", COUNTER)
    pid = torpor.sh("sw", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "sw")

    err = start_and_signal_when(torpor, "sw", torpor.dir("sw") / "ha.stdout.log", '"restoring": true')
    assert "stopped before the restored VM ran" in err, err
    assert torpor.status("sw")["status"] == "Saved"

    out = torpor.run("start", "sw")
    assert "restored in" in out.stderr
    assert torpor.sh("sw", "cat /dev/shm/counter.pid") == pid


def test_stop_after_the_restored_vm_ran_saves_it_again(torpor: Torpor) -> None:
    """A SIGTERM after the restored VM ran but before it answered SSH again: the VM is a booted guest, so with
    saveOnStop it is saved again (not killed), and the next start brings the same processes back."""
    torpor.from_saved("sa", "saveOnStop: true\n")
    torpor.run("start", "sa")
    torpor.sh("sa", COUNTER)
    pid = torpor.sh("sa", "cat /dev/shm/counter.pid")
    torpor.run("stop", "sa")

    ran = "the saved state is loaded and the VM runs; connecting SSH"
    err = start_and_signal_when(torpor, "sa", torpor.dir("sa") / "ha.stderr.log", ran)
    assert "saved the VM state" in err, err  # it never became ready, but is saved
    assert torpor.status("sa")["status"] == "Saved"

    out = torpor.run("start", "sa")
    assert "restored in" in out.stderr
    assert torpor.sh("sa", "cat /dev/shm/counter.pid") == pid
