"""template:debian: a normal Debian system that cloud-init configures from torpor's seed, saved and restored."""

from __future__ import annotations

import pytest

from tests.integration.conftest import COUNTER, Torpor

pytestmark = pytest.mark.integration


def test_debian_boots_with_cloud_init_and_restores(torpor: Torpor) -> None:
    yaml = torpor.home / "deb.yaml"
    yaml.write_text("images: [{location: build:debian}]\nmemory: 1GiB\ndisk: 6GiB\nbootTimeout: 600\n")
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

    torpor.sh("deb", COUNTER)
    torpor.sh("deb", "echo kept > $HOME/file && sync")
    pid = torpor.sh("deb", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "deb")
    out = torpor.run("start", "deb")
    assert "restored in" in out.stderr, out.stderr
    assert torpor.sh("deb", "cat /dev/shm/counter.pid") == pid
    assert torpor.sh("deb", "cat $HOME/file").strip() == "kept"
    torpor.run("stop", "deb")
