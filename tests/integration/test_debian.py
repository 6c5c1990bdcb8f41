"""template:debian: a normal Debian system that cloud-init configures from torpor's seed, saved and restored."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, Torpor, wait_for

pytestmark = pytest.mark.integration

# A service on a unix socket in the guest: each connection's bytes sent back in capitals.
ECHO_SERVER = """
import os, socket, threading
def serve(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data.upper())
s = socket.socket(socket.AF_UNIX)
s.bind("/run/echo.sock")
os.chmod("/run/echo.sock", 0o666)
s.listen()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


def _echo(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        return s.recv(100)


def _ends(conn: socket.socket) -> bool:
    """Whether the peer ends ``conn`` (an end of file or a reset) within 10 s, rather than leaving it waiting."""
    conn.settimeout(10)
    with conn:
        try:
            return conn.recv(100) == b""
        except ConnectionResetError:
            return True


def _configured_by_cloud_init(torpor: Torpor) -> None:
    """cloud-init read torpor's NoCloud seed: the user with torpor's key and sudo, the hostname, the grown disk."""
    assert torpor.sh("deb", "cloud-init status --wait").split()[-1] == "done"
    assert torpor.sh("deb", "cat /run/cloud-init/result.json").count("DataSourceNoCloud") >= 1
    assert torpor.sh("deb", "hostname").strip() == "torpor-deb"
    assert torpor.sh("deb", "sudo -n id -u").strip() == "0"
    assert int(torpor.sh("deb", "df --output=size -B1M / | tail -1")) > 5000  # grown from the image's 3 GiB
    assert torpor.sh("deb", "ps -p 1 -o comm=").strip() == "systemd"
    assert torpor.sh("deb", "systemctl is-active qemu-guest-agent ssh").split() == ["active", "active"]


def test_debian_boots_with_cloud_init_and_restores(torpor: Torpor) -> None:
    ro, rw = torpor.home / "deb files", torpor.home / "deb-work"
    ro.mkdir()
    rw.mkdir()
    (ro / "hello.txt").write_text("from the host\n")
    mounts = f"mounts: [{{location: {json.dumps(str(ro))}}}, {{location: {json.dumps(str(rw))}, writable: true}}]\n"
    yaml = torpor.home / "deb.yaml"
    forwards = "portForwards: [{guestSocket: /run/echo.sock, hostSocket: sock/echo.sock}]\n"
    yaml.write_text(
        "images: [{location: build:debian}]\nmemory: 1GiB\ndisk: 6GiB\nbootTimeout: 600\n" + mounts + forwards
    )
    torpor.run("create", str(yaml))
    torpor.run("start", "deb", timeout=1200)  # the first start may build the image (minutes)

    _configured_by_cloud_init(torpor)

    # The mounts (sshfs from Debian's package, mounted by cloud-init's per-boot script)
    assert torpor.sh("deb", f'cat "{ro}/hello.txt"') == "from the host\n"
    torpor.sh("deb", f"echo from the guest > {rw}/g.txt")
    assert (rw / "g.txt").read_text() == "from the guest\n"
    counter = "exec 4>>count.log; i=0; while sleep 0.2; do i=$((i+1)); echo $i >&4; done"
    torpor.sh("deb", f"cd {rw} && setsid sh -c '{counter}' </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: (rw / "count.log").exists() and len((rw / "count.log").read_text().split()) >= 3)

    # A unix socket forward (Lima's guestSocket/hostSocket) to a service in the guest: the host socket is yours
    # alone, and a connection open through it during the save ends rather than hanging.
    torpor.sh("deb", f"sudo systemd-run --unit=echo python3 -c {shlex.quote(ECHO_SERVER)}")
    torpor.sh("deb", "until [ -S /run/echo.sock ]; do sleep 0.1; done")
    host_sock = torpor.dir("deb") / "sock" / "echo.sock"
    assert host_sock.stat().st_mode & 0o777 == 0o600
    assert _echo(host_sock, b"ping") == b"PING"
    held = socket.socket(socket.AF_UNIX)
    held.connect(str(host_sock))
    held.sendall(b"held")
    assert held.recv(100) == b"HELD"

    torpor.sh("deb", COUNTER)
    torpor.sh("deb", "echo kept > $HOME/file && sync")
    pid = torpor.sh("deb", "cat /dev/shm/counter.pid")
    torpor.run("stop", "--save", "deb")
    assert _ends(held)
    assert not host_sock.exists()  # none while the instance is stopped
    out = torpor.run("start", "deb")
    assert "restored in" in out.stderr, out.stderr
    assert _echo(host_sock, b"again") == b"AGAIN"  # as soon as start returns
    assert f"{host_sock} -> guest /run/echo.sock" in torpor.info("deb")["forwards"]
    assert torpor.sh("deb", "cat /dev/shm/counter.pid") == pid
    assert torpor.sh("deb", "cat $HOME/file").strip() == "kept"
    n = len((rw / "count.log").read_text().split())
    assert wait_for(lambda: len((rw / "count.log").read_text().split()) >= n + 3)  # appending on through the mount
    counts = [int(x) for x in (rw / "count.log").read_text().split()]
    assert counts == list(range(1, len(counts) + 1))
    torpor.run("stop", "deb")
