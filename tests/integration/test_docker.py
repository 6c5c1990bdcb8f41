"""template:docker, which is template:debian's system (systemd, OpenSSH, cloud-init reading torpor's seed) with
Debian's Docker: one image build and one boot test both.  The guest is configured by cloud-init, mounts host
directories with Debian's sshfs, forwards its Docker socket and another service's socket to the host, and keeps its
containers running across `stop --save` / `start` and a snapshot's apply.  No registry is reachable: the test
makes its image with `docker import` of a tree of the guest's static busybox."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Torpor, serves, wait_for

pytestmark = pytest.mark.integration

PORT = 18473  # the web container's published port (on the guest, forwarded to the host's 127.0.0.1)
UDP_PORT = 18474  # a UDP echo service's port in the guest, forwarded (proto: udp) to the host's 18475
UDP_HOST_PORT = 18475
UDP_ECHO = (
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.bind(('0.0.0.0', {UDP_PORT}))\n"
    "while True:\n    data, peer = s.recvfrom(100)\n    s.sendto(data.upper(), peer)\n"
)


def _udp_echo(data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for _ in range(20):  # (a datagram sent before the service binds is lost)
            s.sendto(data, ("127.0.0.1", UDP_HOST_PORT))
            try:
                return s.recv(100)
            except TimeoutError:
                continue
    return b""


IMAGE = (
    "set -e; t=$(mktemp -d); mkdir -p $t/bin $t/www $t/tmp; cp /bin/busybox $t/bin/; "
    "for a in sh httpd cat echo sleep date sync; do ln -s busybox $t/bin/$a; done; "
    "echo hello from a container > $t/www/index.html; "
    'tar -C $t -c . | docker import -c "ENV PATH=/bin" - torpor/busybox >/dev/null'
)
# One line per 0.2 s, each fsynced: numbers with no gap and no repeat, whatever a save does in between.
WRITER = "i=0; while true; do i=$((i+1)); echo $i >> /data/log; sync; sleep 0.2; done"
# (written whole and renamed: a reader must never see the file truncated and not yet written)
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done"


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def api(sock: Path, path: str) -> tuple[int, bytes]:
    """GET ``path`` from Docker's API on ``sock`` (as the docker CLI would, with no CLI needed on the host)."""
    conn = _UnixHTTP(sock, 30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def containers(sock: Path) -> dict[str, tuple[str, int]]:
    """Each running container's name: its id and its main process's pid in the guest."""
    out = {}
    for c in json.loads(api(sock, "/containers/json")[1]):
        info = json.loads(api(sock, f"/containers/{c['Id']}/json")[1])
        out[c["Names"][0].lstrip("/")] = (c["Id"], int(info["State"]["Pid"]))
    return out


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split()]


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


def _configured_by_cloud_init(torpor: Torpor, name: str) -> None:
    """cloud-init read torpor's NoCloud seed: the user with torpor's key and sudo, the hostname, the grown disk."""
    assert torpor.sh(name, "cloud-init status --wait").split()[-1] == "done"
    assert torpor.sh(name, "cat /run/cloud-init/result.json").count("DataSourceNoCloud") >= 1
    assert torpor.sh(name, "hostname").strip() == f"torpor-{name}"
    assert torpor.sh(name, "sudo -n id -u").strip() == "0"
    assert int(torpor.sh(name, "df --output=size -B1M / | tail -1")) > 5000  # grown from the image's 3 GiB
    assert torpor.sh(name, "ps -p 1 -o comm=").strip() == "systemd"
    assert torpor.sh(name, "systemctl is-active qemu-guest-agent ssh").split() == ["active", "active"]


def _host_echo(path: Path) -> None:
    """A service on the host's unix socket ``path`` that answers in upper case (for a reverse forward)."""
    import threading

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            conn = server.accept()[0]
            with conn:
                conn.sendall(conn.recv(100).upper())

    threading.Thread(target=serve, daemon=True).start()


GUEST_CLIENT = (
    "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/tmp/torpor-host/echo.sock'); "
    "s.sendall(b'from the guest'); print(s.recv(100).decode())"
)


def _udp_and_reverse_forwards_answer(torpor: Torpor) -> None:
    assert _udp_echo(b"udp") == b"UDP"
    assert torpor.sh("docker", f"python3 -c {shlex.quote(GUEST_CLIENT)}") == "FROM THE GUEST\n"  # reverse
    assert (torpor.home / "host-echo.sock").exists()  # the host's socket is the user's: never removed


def _create(torpor: Torpor, ro: Path, rw: Path) -> None:
    """Instance "docker" from template:docker, with two more mounts (one with a space in its name), a socket
    forward to the echo service, a reverse one to a service of the host's, a UDP forward and Lima's fields."""
    torpor.run("create", "--name", "docker", "template:docker")
    path = torpor.dir("docker") / "torpor.yaml"
    config = yaml.safe_load(path.read_text())
    config["mounts"] = [{"location": str(ro)}, {"location": str(rw), "writable": True}]
    config["memory"] = "1GiB"  # (less to save and load than the template's 2 GiB)
    config["portForwards"].append({"guestSocket": "/run/echo.sock", "hostSocket": "sock/echo.sock"})
    config["portForwards"].append({"guestPort": UDP_PORT, "hostPort": UDP_HOST_PORT, "proto": "udp"})
    host_sock = torpor.home / "host-echo.sock"
    _host_echo(host_sock)
    config["portForwards"].append(
        {"guestSocket": "/tmp/torpor-host/echo.sock", "hostSocket": str(host_sock), "reverse": True}
    )
    # Lima's fields through cloud-init's per-boot script (torpor's setup and provision scripts from the seed)
    config.update(
        env={"LIMA_STYLE": "yes"},
        timezone="Asia/Tokyo",
        hostResolver={"hosts": {"db.internal": "10.0.2.15"}},
        user={"comment": "Docker User"},
        caCerts={"certs": [(Path(__file__).parent.parent / "data" / "test-ca.pem").read_text()]},
        param={"Word": "bash"},
        provision=[
            {
                "mode": "data",
                "path": "/etc/torpor-test/data.conf",
                "content": "x={{.Param.Word}}\n",
                "owner": "{{.User}}",
            },
            {"mode": "yq", "path": "{{.Home}}/.config/t/x.json", "expression": ".a.b = 1", "owner": "{{.User}}"},
            {
                "mode": "system",
                "script": '#!/bin/bash\nset -euo pipefail\necho "$BASH_VERSION $PARAM_Word" >> /root/sys.log\n',
            },
        ],
        probes=[{"script": "#!/bin/sh\ntest -f /etc/torpor-test/data.conf\n", "hint": "see provision.log"}],
        copyToHost=[{"guest": "/etc/torpor-test/data.conf", "host": "{{.Dir}}/data.conf"}],
    )
    path.write_text(yaml.safe_dump(config))


def _lima_fields_applied(torpor: Torpor, name: str) -> None:
    """The Lima fields _create set, on the cloud-init guest."""
    assert (
        torpor.sh(name, ". /etc/environment; echo $LIMA_STYLE; cat /etc/timezone; date +%Z") == "yes\nAsia/Tokyo\nJST\n"
    )
    assert "10.0.2.15 db.internal" in torpor.sh(name, "cat /etc/hosts")
    # caCerts: in the system's bundle (through update-ca-certificates where the guest has it)
    pem = (Path(__file__).parent.parent / "data" / "test-ca.pem").read_text().strip()
    assert pem in torpor.sh(name, "cat /etc/ssl/certs/ca-certificates.crt")
    user = torpor.sh(name, "id -un").strip()
    assert torpor.sh(name, f"getent passwd {user} | cut -d: -f5") == "Docker User\n"
    assert torpor.sh(name, "stat -c %U /etc/torpor-test/data.conf").strip() == user
    assert torpor.sh(name, "sudo cat /root/sys.log").split()[-1] == "bash"  # run by bash, with PARAM_Word
    assert (torpor.dir(name) / "data.conf").read_text() == "x=bash\n"
    assert json.loads(torpor.sh(name, "cat ~/.config/t/x.json")) == {"a": {"b": 1}}  # mode: yq
    assert torpor.sh(name, "stat -c %U ~/.config ~/.config/t ~/.config/t/x.json").split() == [user] * 3


def _mounts_work(torpor: Torpor, ro: Path, rw: Path) -> None:
    """The mounts (sshfs from Debian's package, mounted by cloud-init's per-boot script), and a process in the
    guest appending to a file in one of them."""
    assert torpor.sh("docker", f'cat "{ro}/hello.txt"') == "from the host\n"
    torpor.sh("docker", f"echo from the guest > {rw}/g.txt")
    assert (rw / "g.txt").read_text() == "from the guest\n"
    counter = "exec 4>>count.log; i=0; while sleep 0.2; do i=$((i+1)); echo $i >&4; done"
    torpor.sh("docker", f"cd {rw} && setsid sh -c '{counter}' </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: (rw / "count.log").exists() and len((rw / "count.log").read_text().split()) >= 3)


def _echo_forwarded(torpor: Torpor, echo_sock: Path) -> socket.socket:
    """Another service's unix socket, forwarded (Lima's guestSocket/hostSocket), yours alone; return a connection
    left open through it."""
    torpor.sh("docker", f"sudo systemd-run --unit=echo python3 -c {shlex.quote(ECHO_SERVER)}")
    torpor.sh("docker", "until [ -S /run/echo.sock ]; do sleep 0.1; done")
    assert echo_sock.stat().st_mode & 0o777 == 0o600
    assert _echo(echo_sock, b"ping") == b"PING"
    held = socket.socket(socket.AF_UNIX)
    held.connect(str(echo_sock))
    held.sendall(b"held")
    assert held.recv(100) == b"HELD"
    return held


def _containers_up(torpor: Torpor, sock: Path) -> dict[str, tuple[str, int]]:
    """The web server, the volume writer and a `docker exec` counter running; return the containers."""
    torpor.sh("docker", IMAGE)
    torpor.sh("docker", f"docker run -d --name web -p {PORT}:80 torpor/busybox httpd -f -p 80 -h /www")
    torpor.sh("docker", f"docker run -d --name writer -v data:/data torpor/busybox sh -c '{WRITER}'")
    torpor.sh("docker", f"docker exec -d web sh -c '{COUNTER}'")
    assert wait_for(lambda: serves(PORT, "hello from a container\n"), timeout=30)
    assert wait_for(lambda: len(numbers(torpor.sh("docker", "docker exec writer cat /data/log"))) >= 3)
    before = containers(sock)
    assert set(before) == {"web", "writer"}
    return before


def _containers_run_on(torpor: Torpor, sock: Path, before: dict[str, tuple[str, int]]) -> None:
    """The same containers and processes, the port answering, the counter counting, the volume's lines whole."""
    assert containers(sock) == before
    assert wait_for(lambda: serves(PORT, "hello from a container\n"), timeout=30)
    count = int(torpor.sh("docker", "docker exec web cat /tmp/count"))
    assert wait_for(lambda: int(torpor.sh("docker", "docker exec web cat /tmp/count")) >= count + 3)
    log = numbers(torpor.sh("docker", "docker exec writer cat /data/log"))
    assert log == list(range(1, len(log) + 1))


def test_docker_vm_keeps_its_containers_across_save_restore_and_snapshots(torpor: Torpor) -> None:
    ro, rw = torpor.home / "deb files", torpor.home / "deb-work"
    ro.mkdir()
    rw.mkdir()
    (ro / "hello.txt").write_text("from the host\n")
    _create(torpor, ro, rw)
    started = torpor.run("start", "docker", timeout=1500)  # the first start may build the image (minutes)
    sock = torpor.dir("docker") / "sock" / "docker.sock"
    echo_sock = torpor.dir("docker") / "sock" / "echo.sock"
    assert f"export DOCKER_HOST=unix://{sock}" in started.stderr, started.stderr
    assert api(sock, "/_ping") == (200, b"OK")
    assert sock.stat().st_mode & 0o777 == 0o600
    _configured_by_cloud_init(torpor, "docker")
    _lima_fields_applied(torpor, "docker")
    _mounts_work(torpor, ro, rw)
    held = _echo_forwarded(torpor, echo_sock)
    torpor.sh("docker", f"sudo systemd-run --unit=udpecho python3 -c {shlex.quote(UDP_ECHO)}")
    _udp_and_reverse_forwards_answer(torpor)
    before = _containers_up(torpor, sock)
    # A client of the forwarded Docker socket with a request open (an event stream) when the save comes.
    events = socket.socket(socket.AF_UNIX)
    events.connect(str(sock))
    events.sendall(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
    torpor.sh("docker", "echo kept > $HOME/file && sync")

    torpor.run("stop", "--save", "docker")
    events.settimeout(10)
    with events:
        _until_closed(events)  # closed, not left waiting
    assert _ends(held)
    assert not sock.exists() and not echo_sock.exists()  # none while the instance is stopped
    time.sleep(2)  # the guest clock must not have stood still meanwhile
    started = torpor.run("start", "docker")
    assert "restored in" in started.stderr and "could not keep" not in started.stderr, started.stderr
    assert api(sock, "/_ping") == (200, b"OK")  # as soon as start returns
    assert _echo(echo_sock, b"again") == b"AGAIN"
    _udp_and_reverse_forwards_answer(torpor)
    assert f"{echo_sock} -> guest /run/echo.sock" in torpor.info("docker")["forwards"]
    assert torpor.sh("docker", "cat $HOME/file").strip() == "kept"
    n = len((rw / "count.log").read_text().split())
    assert wait_for(lambda: len((rw / "count.log").read_text().split()) >= n + 3)  # appending on through the mount
    counts = numbers((rw / "count.log").read_text())
    assert counts == list(range(1, len(counts) + 1))
    _containers_run_on(torpor, sock, before)
    assert abs(int(torpor.sh("docker", "docker exec web date +%s")) - time.time()) < 5

    # A snapshot, work after it, and its apply: back to the snapshot's containers, running on.
    torpor.run("snapshot", "create", "docker", "--tag", "s")
    torpor.sh("docker", "docker run -d --name later torpor/busybox sleep 1000")
    applied = torpor.run("snapshot", "apply", "docker", "--tag", "s", "--force")
    assert "restored in" in applied.stderr, applied.stderr
    _containers_run_on(torpor, sock, before)  # ("later" came after the snapshot)
    torpor.run("stop", "docker")
    assert not sock.exists()


def _until_closed(conn: socket.socket) -> None:
    """Read ``conn`` until the peer ends it (an end of file or a reset); TimeoutError if it does not in time."""
    try:
        while conn.recv(65536):
            pass
    except ConnectionResetError:
        pass
