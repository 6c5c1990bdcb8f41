"""`torpor clone` with the real guest: a saved instance's clone resumes its running machine, a stopped one's is a
new machine with the same disk; neither touches the source."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import COUNTER, Torpor

pytestmark = pytest.mark.integration

STATE = "cat /dev/shm/counter.pid; cat /dev/shm/token; cat $HOME/file"


def ssh_port(torpor: Torpor, name: str) -> int:
    lines = (torpor.dir(name) / "ssh.config").read_text().splitlines()
    return int(next(line.split()[1] for line in lines if line.strip().startswith("Port")))


def test_clone_of_a_saved_instance_resumes_it_and_of_a_stopped_one_boots_anew(torpor: Torpor) -> None:
    torpor.from_saved("src")
    torpor.run("start", "src")
    torpor.sh("src", COUNTER)
    torpor.sh("src", "echo in-ram > /dev/shm/token; echo on-disk > $HOME/file; sync")
    state, hostname = torpor.sh("src", STATE), torpor.sh("src", "hostname")
    refused = torpor.run("clone", "src", "fork", check=False)
    assert refused.returncode != 0 and "only a stopped or saved instance" in refused.stderr
    torpor.run("stop", "--save", "src")

    out = torpor.run("clone", "src", "fork")
    assert "with its saved state" in out.stderr and "torpor start fork" in out.stderr
    assert torpor.status("fork")["status"] == "Saved" and torpor.status("src")["status"] == "Saved"
    again = torpor.run("clone", "src", "fork", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr

    out = torpor.run("start", "fork")
    assert "restored in" in out.stderr, out.stderr
    assert torpor.sh("fork", STATE) == state  # the same processes, memory and disk
    assert torpor.sh("fork", "hostname") == hostname  # a fork: the source's machine, as it was saved
    torpor.sh("fork", "echo fork > $HOME/file; sync")

    # The source is untouched: it restores on its own port, its disk as it was, while the fork runs.
    out = torpor.run("start", "src")
    assert "restored in" in out.stderr, out.stderr
    assert torpor.sh("src", STATE) == state
    assert ssh_port(torpor, "src") != ssh_port(torpor, "fork")
    torpor.run("stop", "src")

    # A stopped instance's clone is a new machine (its own instance-id and hostname) with the same disk; its
    # snapshots stay behind.
    torpor.run("stop", "fork")
    torpor.run("snapshot", "create", "fork", "--tag", "t")
    out = torpor.run("clone", "fork", "copy")
    assert "snapshots are not cloned (left out: t)" in out.stderr and "boots it" in out.stderr
    assert torpor.status("copy")["status"] == "Stopped"
    assert torpor.run("snapshot", "list", "copy", "--format", "json").stdout == ""
    out = torpor.run("start", "copy")
    assert "ready in" in out.stderr and "restored" not in out.stderr
    assert torpor.sh("copy", "hostname").strip() == "torpor-copy"
    assert torpor.sh("copy", "cat $HOME/file") == "fork\n"
    torpor.run("start", "fork")  # its first cold boot: from now on a machine of its own
    assert torpor.sh("fork", "hostname").strip() == "torpor-fork"
    ids = {name: (torpor.dir(name) / "instance-id").read_text() for name in ("fork", "copy")}
    assert ids["fork"] != ids["copy"], ids
    assert torpor.sh("copy", "grep instance-id /run/cidata/meta-data").split()[-1] == ids["copy"].strip()
    rows = torpor.run("snapshot", "list", "fork", "--format", "json").stdout.splitlines()
    assert [json.loads(row)["tag"] for row in rows] == ["t"]
