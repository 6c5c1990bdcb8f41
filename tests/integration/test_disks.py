"""Additional disks (Lima's additionalDisks, `torpor disk`) and disk growth on the real default guest: formatted
once, mounted at /mnt/lima-NAME, held by the instance while it runs or is saved, kept across a save and restore
and cold boots; a larger `disk:` grows the root at the next cold boot, a smaller one is refused."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.conftest import Torpor, write_template

pytestmark = pytest.mark.integration


def root_size_mib(torpor: Torpor, name: str) -> int:
    return int(torpor.sh(name, "df -m / | tail -1").split()[1])


def test_additional_disk_and_disk_growth(torpor: Torpor) -> None:
    torpor.run("disk", "create", "data", "--size", "1GiB")
    assert torpor.run("disk", "list").stdout.splitlines()[1].split()[:3] == ["data", "1GiB", "-"]
    tpl = write_template(torpor, "dk", "disk: 2GiB\nadditionalDisks: [data]\n")
    torpor.run("create", str(tpl))
    torpor.run("start", "dk")
    assert torpor.sh("dk", "grep ' /mnt/lima-data ' /proc/mounts | cut -d' ' -f3") == "ext4\n"
    torpor.sh("dk", "echo kept | sudo tee /mnt/lima-data/file >/dev/null && sync")
    counter = "i=0; while true; do i=$((i+1)); echo $i >> /mnt/lima-data/count; sleep 0.2; done"
    torpor.sh("dk", f"sudo setsid sh -c '{counter}' </dev/null >/dev/null 2>&1 &")
    assert torpor.run("disk", "list").stdout.splitlines()[1].split()[2] == "dk"
    refused = torpor.run("disk", "delete", "data", check=False)
    assert refused.returncode != 0 and "in use by dk" in refused.stderr

    # saved: the disk stays the machine's; a memory snapshot is refused, saying why
    torpor.run("stop", "--save", "dk")
    assert torpor.run("disk", "list").stdout.splitlines()[1].split()[2] == "dk"
    assert "in use by dk" in torpor.run("disk", "resize", "data", "--size", "2GiB", check=False).stderr
    snap = torpor.run("snapshot", "create", "dk", "--tag", "t", check=False)
    assert snap.returncode != 0 and "additional disks (data)" in snap.stderr
    out = torpor.run("start", "dk")
    assert "restored" in out.stderr
    before = int(torpor.sh("dk", "tail -1 /mnt/lima-data/count"))
    torpor.sh("dk", f"until [ $(tail -1 /mnt/lima-data/count) -gt {before + 2} ]; do sleep 0.2; done")
    assert torpor.sh("dk", "cat /mnt/lima-data/file") == "kept\n"

    # a larger disk: grown at the next cold boot, the root filesystem with it; the data disk not formatted again
    assert root_size_mib(torpor, "dk") < 2100
    torpor.run("stop", "--save", "dk")
    edited = torpor.run("edit", "dk", "--disk", "3")
    assert "applies at the next cold boot" in edited.stderr
    out = torpor.run("start", "--cold", "dk")
    assert "disk grown from 2GiB to 3GiB" in out.stderr
    assert root_size_mib(torpor, "dk") > 2900
    assert torpor.sh("dk", "cat /mnt/lima-data/file") == "kept\n"

    # a smaller disk is refused at the boot, nothing changed
    torpor.run("stop", "dk")
    torpor.run("edit", "dk", "--disk", "2")
    failed = torpor.run("start", "dk", check=False)
    assert failed.returncode != 0 and "never shrunk" in failed.stderr
    disk = torpor.dir("dk") / "disk.qcow2"
    info = subprocess.run(["qemu-img", "info", "--output=json", disk], capture_output=True, check=True)
    assert json.loads(info.stdout)["virtual-size"] == 3 * 1024**3

    # stopped: the disk is free again
    assert torpor.run("disk", "list").stdout.splitlines()[1].split()[2] == "-"
    torpor.run("disk", "resize", "data", "--size", "2GiB")
    torpor.run("delete", "dk")
    torpor.run("disk", "delete", "data")
    assert torpor.run("disk", "list").stdout.splitlines()[1:] == []
