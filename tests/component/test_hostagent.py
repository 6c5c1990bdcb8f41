"""The real host agent, over its real ha.sock and real signals, against a fake driver and guest
(tests/component/fake_agent.py): its states, its API, its stop policy, its records and its clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.hostagent.client import HostAgentClient
from torpor.store import filenames, savedstate

ROOT = Path(__file__).resolve().parents[2]


class Agent:
    def __init__(self, home: Path, name: str) -> None:
        self.dir = home / name
        env = dict(os.environ, TORPOR_HOME=str(home), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.component.fake_agent", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(self.dir / "agent.err").open("wb"),
            text=True,
        )
        self.events: list[dict[str, Any]] = []

    def until(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.events.append(json.loads(line))
            if self.events[-1]["type"] in (kind, "exiting"):
                break
            assert time.monotonic() < deadline, self.events
        assert self.events and self.events[-1]["type"] == kind, (self.events, (self.dir / "agent.err").read_text())
        return self.events[-1]

    @property
    def api(self) -> HostAgentClient:
        return HostAgentClient(self.dir / filenames.HA_SOCK)

    def driver_calls(self) -> list[str]:
        return (self.dir / "driver.log").read_text().split("\n")[:-1]

    def stop(self, sig: int = signal.SIGTERM) -> dict[str, Any]:
        self.proc.send_signal(sig)
        exiting = self.until("exiting")
        assert self.proc.wait(20) == 0
        return exiting


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = Path(os.path.realpath(tmp_path))
    (home / "vm").mkdir()
    (home / "vm" / filenames.INSTANCE_YAML).write_text("images: [{location: /images/fake.qcow2}]\n")
    yield home


def test_boot_api_save_on_signal_and_restore(home: Path) -> None:
    agent = Agent(home, "vm")
    ready = agent.until("ready")
    assert ready["restored"] is False and ready["sshPort"] == 40000
    info = agent.api.get("/v1/info")
    assert info["state"] == "ready" and info["ready"] is True and info["vm"]["state"] == "running"
    assert agent.api.get("/v1/driver/config") == {"saveOnStop": False}
    assert agent.api.call("PATCH", "/v1/driver/config", {"saveOnStop": True}) == {"saveOnStop": True}
    boot = json.loads((agent.dir / filenames.BOOT_RECORD).read_text())
    assert boot["argv"] == ["fake-vm"] and boot["config"]["saveOnStop"] is False

    exiting = agent.stop(signal.SIGINT)  # the runtime saveOnStop decides, not the file's
    assert exiting["ok"] and exiting["saved"] is True and "saved the VM state" in exiting["message"]
    assert agent.driver_calls() == ["start", "save", "quit"]
    saved = savedstate.load(agent.dir)
    assert saved is not None and saved.manifest["boot"]["sshPort"] == 40000 and saved.mechanism == "fake"
    assert not (agent.dir / filenames.HA_PID).exists() and not (agent.dir / filenames.HA_SOCK).exists()

    again = Agent(home, "vm")
    ready = again.until("ready")
    assert ready["restored"] is True and "restored in" in ready["message"]
    assert savedstate.load(again.dir) is None  # a restored state is never restored twice
    assert again.api.get("/v1/info")["restored"] is True
    exiting = again.stop()  # saveOnStop as at the boot that was saved: false
    assert exiting["saved"] is False and exiting["message"] == "the guest shut down"
    assert again.driver_calls()[-2:] == ["restore", "stop 60"]


def test_bad_requests_change_nothing_and_snapshots_go_through_the_driver(home: Path) -> None:
    agent = Agent(home, "vm")
    agent.until("ready")
    for body in ({"saveOnStop": "yes"}, {"cpus": 4}, [1]):
        status, reply = agent.api.request("PATCH", "/v1/driver/config", body)
        assert status == 400 and reply["message"]
    assert agent.api.get("/v1/driver/config") == {"saveOnStop": False}
    (agent.dir / filenames.CIDATA).write_bytes(b"seed")
    taken = agent.api.call("POST", "/v1/snapshots", {"tag": "t"})
    assert taken["tag"] == "t" and (agent.dir / "snapshots" / "t" / filenames.SNAPSHOT_META).exists()
    status, reply = agent.api.request("POST", "/v1/snapshots", {"tag": "t"})
    assert status == 409 and "exists" in reply["message"]
    assert agent.api.call("DELETE", "/v1/snapshots", {"tag": "t"}) == {"tag": "t", "deleted": True}
    assert not (agent.dir / "snapshots" / "t").exists()
    agent.stop()
    assert agent.driver_calls() == ["start", "snapshot t", "delete snapshot t", "stop 60"]
