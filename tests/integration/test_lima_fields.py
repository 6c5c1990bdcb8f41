"""Lima's fields on the real default guest: a Lima-style template with a base, param, env, user, timezone, hosts,
dns, every provisioning mode, probes, message and copyToHost; then across a save and restore, and a cold boot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import Torpor

pytestmark = pytest.mark.integration

CA = Path(__file__).parent.parent / "data" / "test-ca.pem"  # a self-signed certificate, "CN=torpor test CA"

BASE = """\
images: [{location: build:default}]
memory: 512MiB
env: {FROM_BASE: base, SHARED: base}
provision:
  - mode: system
    script: echo base-first >> /root/order
"""

TEMPLATE = """\
minimumLimaVersion: 2.0.0
base: base.yaml
vmType: null
cpus: null
video: {display: none}
param: {Greeting: hello}
env: {SHARED: mine, SPACED: "a b"}
user: {name: lima, comment: Lima User, uid: 1500, home: /home/lima-home}
timezone: Asia/Tokyo
dns: [10.0.2.3]
hostResolver:
  hosts:
    db.internal: 10.0.2.15
    alias.internal: host.lima.internal
mounts: []
caCerts:
  files: [CA_FILE]
provision:
  - mode: boot
    script: echo boot >> /root/order
  - mode: user
    script: |
      echo "user $(id -un) $PARAM_Greeting {{.Param.Greeting}} {{.Home}}" >> "$HOME/order"
  - mode: data
    path: /etc/torpor-data/{{.Name}}.conf
    content: |
      greeting={{.Param.Greeting}}
    owner: "{{.User}}"
    permissions: 640
  - mode: data
    path: /var/lib/keep
    content: first
    overwrite: false
  - mode: system
    script: |
      echo "system $(cat /etc/torpor-data/{{.Name}}.conf)" >> /root/order
      echo second > /var/lib/keep.next
  - mode: dependency
    script: echo dependency >> /root/order
probes:
  - description: the data file is there
    script: |
      #!/bin/sh
      echo probe >> "$HOME/probes"
      test -s /etc/torpor-data/{{.Name}}.conf
    hint: look at provision.log
copyToHost:
  - guest: /etc/torpor-data/{{.Name}}.conf
    host: "{{.Dir}}/copied/greeting.conf"
    deleteOnStop: true
message: |
  Hello from {{.Name}} in {{.Dir}} ({{.Param.Greeting}})
"""


def test_lima_template_on_the_default_guest(torpor: Torpor, tmp_path: Path) -> None:
    src = tmp_path / "lima"
    src.mkdir()
    (src / "base.yaml").write_text(BASE)
    (src / "lf.yaml").write_text(TEMPLATE.replace("CA_FILE", str(CA)))
    assert torpor.run("validate", str(src / "lf.yaml")).stdout == f"{src / 'lf.yaml'}: ok\n"
    torpor.run("create", str(src / "lf.yaml"))
    d = torpor.dir("lf")
    out = torpor.run("start", "lf")
    assert f"Hello from lf in {d} (hello)" in out.stderr  # message, expanded
    copied = d / "copied" / "greeting.conf"
    assert copied.read_text() == "greeting=hello\n"

    def sh(script: str) -> str:
        return torpor.sh("lf", script)

    # user
    assert sh("id -un; id -u; echo $HOME").split() == ["lima", "1500", "/home/lima-home"]
    assert sh("grep ^lima: /etc/passwd").split(":")[4] == "Lima User"
    # the order of a boot: boot, dependency, data, system (the base's first), user
    assert sh("sudo cat /root/order").splitlines() == [
        "boot",
        "dependency",
        "base-first",
        "system greeting=hello",
    ]
    assert sh("cat $HOME/order") == "user lima hello hello /home/lima-home\n"
    assert sh("stat -c '%U %a' /etc/torpor-data/lf.conf") == "lima 640\n"
    # env (the base's merged under the template's), login shells get it
    env = sh(". /etc/profile; echo $FROM_BASE/$SHARED/$SPACED")
    assert env == "base/mine/a b\n"
    # time zone, hosts, dns
    assert sh("cat /etc/timezone; date +%Z") == "Asia/Tokyo\nJST\n"
    hosts = sh("cat /etc/hosts")
    assert "10.0.2.15 db.internal\n" in hosts and "10.0.2.2 alias.internal\n" in hosts
    assert "10.0.2.2 host.lima.internal\n" in hosts
    assert sh("cat /etc/resolv.conf") == "nameserver 10.0.2.3\n"
    assert sh("cat $HOME/probes") == "probe\n"
    # caCerts: in the guest's bundle (this guest has no update-ca-certificates)
    assert CA.read_text().strip() in sh("cat /etc/ssl/certs/ca-certificates.crt")

    # save and restore: the guest as it was (no provisioning, no probes again); copyToHost again
    torpor.run("stop", "--save", "lf")
    assert not copied.exists()  # deleteOnStop
    out = torpor.run("start", "lf")
    assert "restored" in out.stderr and f"Hello from lf in {d}" in out.stderr
    assert copied.read_text() == "greeting=hello\n"
    assert sh("cat $HOME/probes") == "probe\n"
    assert sh("sudo cat /root/order").count("system") == 1
    assert sh("cat /etc/timezone") == "Asia/Tokyo\n"

    # a cold boot runs every provisioning entry again; overwrite: false keeps the data file
    torpor.run("restart", "lf")
    assert sh("sudo cat /root/order").count("system greeting=hello") == 2
    assert sh("sudo cat /var/lib/keep") == "first"
    assert sh("cat $HOME/probes") == "probe\nprobe\n"
    torpor.run("stop", "lf")
    assert not copied.exists()


def test_failing_probe_shows_its_hint(torpor: Torpor, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "images: [{location: build:default}]\nmemory: 512MiB\nprobes:\n"
        "  - description: a tool that is not there\n    script: |\n      #!/bin/sh\n"
        "      echo 'no frobnicator' >&2\n      exit 4\n    hint: install the frobnicator\n"
    )
    torpor.run("create", str(tmp_path / "p.yaml"))
    out = torpor.run("start", "p", check=False)
    assert out.returncode == 2, out.stderr
    assert "readiness probe 'a tool that is not there' failed (exit code 4)" in out.stderr
    assert "no frobnicator" in out.stderr and "hint: install the frobnicator" in out.stderr
    torpor.run("stop", "p")
    assert os.path.exists(torpor.dir("p"))
