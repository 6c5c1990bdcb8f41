"""Inside the guest: shell, sudo, copy, port forwards, provisioning, cidata, with the real default guest."""

from __future__ import annotations

import socket
import stat
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import Torpor, serves, wait_for, write_template
from torpor.guest.ssh import free_port

pytestmark = pytest.mark.integration


def fetch(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
        return str(r.read().decode())


def host_listeners(port: int) -> set[str]:
    """Local addresses of host sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    addrs = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            f = line.split()
            addr, _, p = f[1].partition(":")
            if f[3] == "0A" and int(p, 16) == port:
                addrs.add(addr)
    return addrs


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def test_shell_copy_forwards_provisioning_and_cidata(torpor: Torpor, ports: tuple[int, int], tmp_path: Path) -> None:
    static_host, auto_port = ports
    tpl = write_template(
        torpor,
        "acc",
        f"""portForwards:
  - guestPort: 8080
    hostPort: {static_host}
provision:
  - mode: system
    script: |
      echo system-ran >> /root/system-count
  - mode: user
    script: |
      id -un > "$HOME/user-ran"
  - mode: boot
    script: |
      echo boot >> /root/boot-count
""",
    )
    torpor.run("create", str(tpl))
    torpor.run("start", "acc")
    d = torpor.dir("acc")

    # shell: output and exit code pass through, as the non-root user, and sudo works
    out = torpor.run("shell", "acc", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert out.returncode == 7 and out.stdout.strip() == "out" and "err" in out.stderr
    assert torpor.run("shell", "acc", "id", "-u").stdout.strip() != "0"
    assert torpor.run("shell", "acc", "sudo", "id", "-u").stdout.strip() == "0"
    assert torpor.run("shell", "--workdir", "/tmp", "acc", "pwd").stdout.strip() == "/tmp"

    # provisioning: system and user scripts ran, as root and as the user
    assert torpor.run("shell", "acc", "sudo", "cat", "/root/system-count").stdout == "system-ran\n"
    user = torpor.run("shell", "acc", "id", "-un").stdout.strip()
    assert torpor.run("shell", "acc", "sh", "-c", 'cat "$HOME/user-ran"').stdout.strip() == user
    assert (d / "provision.log").exists()
    log = (d / "provision.log").read_text()
    # in Lima's order: boot, system, user
    assert log.index("=== 0-02-boot") < log.index("=== 4-00-system") < log.index("=== 5-01-user")

    # copy both ways, recursively
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("payload\n")
    torpor.run("copy", "-r", str(src), "acc:/tmp/")
    assert torpor.run("shell", "acc", "cat", "/tmp/tree/sub/f.txt").stdout == "payload\n"
    back = tmp_path / "back"
    torpor.run("copy", "-r", "acc:/tmp/tree", str(back))
    assert (back / "sub" / "f.txt").read_text() == "payload\n"

    # a static forward (rule: guest 8080 -> host static_host) and an automatic one (same port)
    for port in (8080, auto_port):
        torpor.run(
            "shell",
            "acc",
            "sh",
            "-c",
            f"mkdir -p /tmp/w{port} && echo p{port} > /tmp/w{port}/index.html && "
            f"busybox httpd -f -p {port} -h /tmp/w{port} </dev/null >/dev/null 2>&1 & echo $! > /tmp/w{port}.pid",
        )
    assert wait_for(lambda: serves(static_host, "p8080\n")), "static forward did not appear"
    assert wait_for(lambda: serves(auto_port, f"p{auto_port}\n")), "automatic forward did not appear"
    # loopback only
    assert host_listeners(static_host) == {"0100007F"}
    assert host_listeners(auto_port) == {"0100007F"}
    events = (d / "ha.stdout.log").read_text()
    assert f"forwarding 127.0.0.1:{auto_port} -> guest port {auto_port}" in events

    # the server stops listening: the forward goes
    torpor.run(
        "shell",
        "acc",
        "sh",
        "-c",
        f"kill $(cat /tmp/w{auto_port}.pid)",
    )
    assert wait_for(lambda: not host_listeners(auto_port)), "the forward stayed after the guest stopped listening"
    assert f"stopped forwarding 127.0.0.1:{auto_port}" in (d / "ha.stdout.log").read_text()

    # SSH keys are private; the ssh port listens on loopback only
    key = torpor.home / "_config" / "user"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.with_name("user.pub").stat().st_mode) == 0o600
    ssh_port = int(
        next(line.split()[1] for line in (d / "ssh.config").read_text().splitlines() if line.strip().startswith("Port"))
    )
    assert host_listeners(ssh_port) == {"0100007F"}

    # second boot: same instance-id; provisioning runs at every boot, as in Lima
    iid1 = torpor.run("shell", "acc", "cat", "/run/cidata/meta-data").stdout
    torpor.run("stop", "acc")
    assert not host_listeners(static_host), "a forward outlived the stop"
    torpor.run("start", "acc")
    iid2 = torpor.run("shell", "acc", "cat", "/run/cidata/meta-data").stdout
    assert "instance-id:" in iid1 and iid1 == iid2
    assert torpor.run("shell", "acc", "sudo", "cat", "/root/system-count").stdout == "system-ran\nsystem-ran\n"
    assert torpor.run("shell", "acc", "sudo", "cat", "/root/boot-count").stdout == "boot\nboot\n"
    torpor.run("stop", "acc")


def test_failing_provision_reports_degraded(torpor: Torpor) -> None:
    tpl = write_template(
        torpor, "bad", "provision:\n  - mode: system\n    script: |\n      echo 'cannot frobnicate' >&2\n      exit 3\n"
    )
    torpor.run("create", str(tpl))
    out = torpor.run("start", "bad", check=False)
    assert out.returncode == 2
    assert "provisioning failed" in out.stderr
    assert "exited with code 3" in out.stderr and "cannot frobnicate" in out.stderr
    assert torpor.status("bad")["status"] == "Running"  # degraded, but reachable for debugging
    assert torpor.info("bad")["degraded"]


def test_ssh_port_is_reachable_with_plain_ssh(torpor: Torpor) -> None:
    torpor.run("start", "plain")
    cmd = torpor.run("show-ssh", "--format", "cmd", "plain").stdout.split()
    import subprocess

    out = subprocess.run([*cmd, "hostname"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "torpor-plain"
    # a socket test that the guest's ssh answers on the forwarded loopback port
    port = int(
        next(
            line.split()[1]
            for line in (torpor.dir("plain") / "ssh.config").read_text().splitlines()
            if line.strip().startswith("Port")
        )
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-")
