"""template:debian: a normal Debian system that cloud-init configures from torpor's seed, saved and restored."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import COUNTER, Torpor, wait_for

pytestmark = pytest.mark.integration


def test_debian_boots_with_cloud_init_and_restores(torpor: Torpor) -> None:
    ro, rw = torpor.home / "deb files", torpor.home / "deb-work"
    ro.mkdir()
    rw.mkdir()
    (ro / "hello.txt").write_text("from the host\n")
    mounts = f"mounts: [{{location: {json.dumps(str(ro))}}}, {{location: {json.dumps(str(rw))}, writable: true}}]\n"
    yaml = torpor.home / "deb.yaml"
    yaml.write_text("images: [{location: build:debian}]\nmemory: 1GiB\ndisk: 6GiB\nbootTimeout: 600\n" + mounts)
    torpor.run("create", str(yaml))
    torpor.run("start", "deb", timeout=1200)  # the first start may build the image (minutes)

    # cloud-init read torpor's NoCloud seed: the user with torpor's key and sudo, the hostname, the grown disk.
    assert torpor.sh("deb", "cloud-init status --wait").split()[-1] == "done"
    assert torpor.sh("deb", "cat /run/cloud-init/result.json").count("DataSourceNoCloud") >= 1
    assert torpor.sh("deb", "hostname").strip() == "torpor-deb"
    assert torpor.sh("deb", "sudo -n id -u").strip() == "0"
    assert int(torpor.sh("deb", "df --output=size -B1M / | tail -1")) > 5000  # grown from the image's 3 GiB
    assert torpor.sh("deb", "ps -p 1 -o comm=").strip() == "systemd"
    assert torpor.sh("deb", "systemctl is-active qemu-guest-agent ssh").split() == ["active", "active"]

    # The mounts (sshfs from Debian's package, mounted by cloud-init's per-boot script)
    assert torpor.sh("deb", f'cat "{ro}/hello.txt"') == "from the host\n"
    torpor.sh("deb", f"echo from the guest > {rw}/g.txt")
    assert (rw / "g.txt").read_text() == "from the guest\n"
    counter = "exec 4>>count.log; i=0; while sleep 0.2; do i=$((i+1)); echo $i >&4; done"
    torpor.sh("deb", f"cd {rw} && setsid sh -c '{counter}' </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: (rw / "count.log").exists() and len((rw / "count.log").read_text().split()) >= 3)

    torpor.sh("deb", COUNTER)
    torpor.sh("deb", "echo kept > $HOME/file && sync")
    pid = torpor.sh("deb", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "deb")
    out = torpor.run("start", "deb")
    assert "restored in" in out.stderr, out.stderr
    assert torpor.sh("deb", "cat /dev/shm/counter.pid") == pid
    assert torpor.sh("deb", "cat $HOME/file").strip() == "kept"
    n = len((rw / "count.log").read_text().split())
    assert wait_for(lambda: len((rw / "count.log").read_text().split()) >= n + 3)  # appending on through the mount
    counts = [int(x) for x in (rw / "count.log").read_text().split()]
    assert counts == list(range(1, len(counts) + 1))
    torpor.run("stop", "deb")
