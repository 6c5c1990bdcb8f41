"""Create, start, list, stop, start again, delete: the VM manager core with a real guest."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, Torpor, remove_home, write_template
from torpor.hostagent.client import HostAgentClient
from torpor.store.instance import pid_alive

pytestmark = pytest.mark.integration


def test_full_lifecycle_keeps_disk_data(torpor: Torpor) -> None:
    torpor.run("create", "--name", "life")
    assert torpor.status("life")["status"] == "Stopped"

    out = torpor.run("start", "life")
    assert "ready in" in out.stderr
    row = torpor.status("life")
    assert row["status"] == "Running" and row["cpus"] == 2 and row["memory"] == 1024**3
    info = torpor.info("life")
    assert info["ready"] is True and info["vm"]["state"] == "running"
    assert info["guest"]["boots"] == "1"
    assert stat.S_IMODE((torpor.dir("life") / "ha.sock").stat().st_mode) == 0o600

    again = torpor.run("start", "life", check=False)
    assert again.returncode != 0 and "already running" in again.stderr

    out = torpor.run("stop", "life")
    assert "stopped: the guest shut down" in out.stderr
    assert torpor.status("life")["status"] == "Stopped"
    assert not (torpor.dir("life") / "ha.pid").exists()

    torpor.run("start", "life")
    # The guest counts its boots on its own disk: the count written at the first boot survived the stop.
    assert torpor.info("life")["guest"]["boots"] == "2"

    refused = torpor.run("delete", "life", check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    torpor.run("stop", "life")
    torpor.run("delete", "life")
    assert not torpor.dir("life").exists()
    assert torpor.run("list", "--format", "json").stdout == ""


def test_start_creates_the_default_instance(torpor: Torpor) -> None:
    out = torpor.run("start")
    assert "creating instance 'default'" in out.stderr
    assert torpor.status("default")["status"] == "Running"
    torpor.run("stop", "--force", "default")


def test_force_stop_then_start_again(torpor: Torpor) -> None:
    torpor.from_saved("f")  # a guest that has booted once
    torpor.run("start", "f")
    qemu_pid = int((torpor.dir("f") / "qemu.pid").read_text())
    torpor.run("stop", "--force", "f")
    assert torpor.status("f")["status"] == "Stopped"
    assert not pid_alive(qemu_pid)
    torpor.run("start", "f")
    # A forced stop is a power cut: the guest still finds its disk and counts a second boot.
    assert torpor.info("f")["guest"]["boots"] == "2"


def test_killed_host_agent_is_reported_and_recovered(torpor: Torpor) -> None:
    torpor.from_saved("k")  # a guest that has booted once
    torpor.run("start", "k")
    d = torpor.dir("k")
    agent = int((d / "ha.pid").read_text())
    qemu = int((d / "qemu.pid").read_text())
    os.kill(agent, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.05)  # QEMU follows its host agent (parent-death signal)
    assert not pid_alive(qemu)
    row = torpor.status("k")
    assert row["status"] == "Broken"
    assert "died" in row["reason"] and "torpor start k" in row["reason"]
    table = torpor.run("list")
    assert "Broken" in table.stdout and "stale" in table.stderr

    out = torpor.run("start", "k")
    assert "recovering" in out.stderr
    assert torpor.status("k")["status"] == "Running"
    assert torpor.info("k")["guest"]["boots"] == "2"


def test_bad_yaml_is_a_clear_error_and_creates_nothing(torpor: Torpor, tmp_path: os.PathLike[str]) -> None:
    bad = torpor.home / "bad.yaml"
    bad.write_text("images: [{location: build:default}]\ncpus: zero\nmemory: 1GiB\nmount: []\n")
    out = torpor.run("create", str(bad), check=False)
    assert out.returncode == 1
    assert "cpus:" in out.stderr and "mount: unknown field" in out.stderr
    assert not (torpor.home / "bad").exists()
    syntax = torpor.home / "syntax.yaml"
    syntax.write_text("cpus: [1\n")
    out = torpor.run("create", str(syntax), check=False)
    assert out.returncode == 1 and "not valid YAML" in out.stderr
    assert not (torpor.home / "syntax").exists()
    assert "Traceback" not in out.stderr


def test_api_errors_are_json(torpor: Torpor) -> None:
    torpor.from_saved("api")
    torpor.run("start", "api")
    client = HostAgentClient(torpor.dir("api") / "ha.sock")
    status, body = client.request("GET", "/v1/nothing")
    assert status == 404 and "message" in body
    info = client.get("/v1/info")
    assert json.dumps(info)  # plain JSON
    assert info["name"] == "api" and info["ready"] is True and info["vm"]["state"] == "running"
    assert info["vm"]["accel"] in ("kvm", "tcg")
    torpor.run("stop", "api")


def test_boot_timeout_says_where_the_vm_was_and_leaves_nothing_running(torpor: Torpor) -> None:
    path = write_template(torpor, "slow", "bootTimeout: 2\n")
    torpor.run("create", str(path))
    out = torpor.run("start", "slow", check=False)
    assert out.returncode != 0 and "did not report ready within the boot timeout" in out.stderr
    # The agent's log (its tail is in the error) says whether the VM ran and where its vCPUs were.
    assert re.search(r"VM running; vCPUs at [RE]IP=[0-9a-f]+", out.stderr), out.stderr
    row = torpor.status("slow")
    assert row["status"] == "Stopped", row
    # Nothing is left holding the disk: with time enough, the same instance boots.
    yaml = torpor.dir("slow") / "torpor.yaml"
    yaml.write_text(yaml.read_text().replace("bootTimeout: 2", "bootTimeout: 120"))
    assert "ready in" in torpor.run("start", "slow").stderr


def test_a_home_with_a_comma_in_its_path_boots_saves_and_restores(torpor: Torpor) -> None:
    """Paths go into QEMU's option strings (file=PATH,if=none...): a comma in one must not start another option."""
    home = Path(tempfile.mkdtemp(prefix="torpor-it,comma-", dir="/tmp"))
    shutil.copytree(torpor.home / "_config", home / "_config")
    t = Torpor(home, dict(torpor.env, TORPOR_HOME=str(home)))
    try:
        t.run("create", str(write_template(t, "c")))
        assert "ready in" in t.run("start", "c").stderr
        t.sh("c", COUNTER)
        pid = t.sh("c", "cat /dev/shm/counter.pid")
        t.run("stop", "--save", "c")
        assert t.status("c")["status"] == "Saved"
        out = t.run("start", "c")
        assert "restored in" in out.stderr, out.stderr
        assert t.sh("c", "cat /dev/shm/counter.pid") == pid
    finally:
        remove_home(t)
