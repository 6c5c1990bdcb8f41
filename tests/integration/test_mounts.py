"""Host directories in the real default guest (reverse-sshfs over its own virtio-serial channel), and what becomes of
them, and of the processes using them, across `stop --save` / `start` and a snapshot's apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Torpor, wait_for, write_template
from tests.integration.qemus import debian12_qemu

pytestmark = pytest.mark.integration

# A process with its current directory in the writable mount, one descriptor reading the read-only mount's
# lines.txt and one appending to the writable mount's progress.log: one line per line read, with the shell's pid.
WORKER = (
    'cd {rw} && setsid sh -c \'exec 3<"{ro}/lines.txt" 4>>progress.log; '
    'while read -r line <&3; do echo "$$ $line" >&4; sleep 0.2; done\' </dev/null >/dev/null 2>&1 &'
)


def _dirs(torpor: Torpor) -> tuple[Path, Path]:
    ro = torpor.home / "host files"  # a space in the name, as in many a project directory
    rw = torpor.home / "work"
    ro.mkdir()
    rw.mkdir()
    (ro / "lines.txt").write_text("".join(f"line{i}\n" for i in range(1, 2001)))
    (ro / "hello.txt").write_text("from the host\n")
    os.symlink("hello.txt", ro / "link.txt")
    (rw / "sub").mkdir()
    return ro, rw


def _body(ro: Path, rw: Path) -> str:
    return (
        "saveOnStop: true\n"
        f"mounts:\n  - location: {json.dumps(str(ro))}\n  - location: {json.dumps(str(rw))}\n    writable: true\n"
    )


def _shell_in(torpor: Torpor, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torpor", "--no-tty", "shell", *args],
        env=torpor.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _progress(rw: Path) -> list[tuple[str, int]]:
    """progress.log as (pid, line number) pairs."""
    out = []
    for row in (rw / "progress.log").read_text().splitlines():
        pid, line = row.split()
        out.append((pid, int(line.removeprefix("line"))))
    return out


def test_mounts_share_files_both_ways_and_survive_save_restore_and_snapshots(torpor: Torpor) -> None:
    ro, rw = _dirs(torpor)
    torpor.run("create", "--name", "m", str(write_template(torpor, "m", _body(ro, rw))))
    torpor.run("start", "m")
    gro, grw = str(ro), str(rw)  # the same paths in the guest (mountPoint's default)

    # host -> guest, symlinks, read-only refusal, guest -> host with mode and mtime
    assert torpor.sh("m", f'cat "{gro}/hello.txt" "{gro}/link.txt"') == "from the host\n" * 2
    refused = torpor.run("shell", "m", "sh", "-c", f'echo x > "{gro}/new.txt"', check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
    assert not (ro / "new.txt").exists()
    torpor.sh(
        "m", f"cd {grw} && echo from the guest > g.txt && chmod 640 g.txt && touch -d '2001-02-03 04:05:06' g.txt"
    )
    st = (rw / "g.txt").stat()
    assert (rw / "g.txt").read_text() == "from the guest\n"
    torpor.sh("m", f"echo new > {grw}/new.txt")
    assert (rw / "new.txt").stat().st_mode & 0o777 == 0o644  # the guest user's umask, not the host agent's
    assert (st.st_mode & 0o777, st.st_uid) == (0o640, os.getuid())
    assert time.gmtime(st.st_mtime)[:6] == (2001, 2, 3, 4, 5, 6)  # the guest's clock is in UTC
    (rw / "h.txt").write_text("written on the host\n")
    assert torpor.sh("m", f"cat {grw}/h.txt") == "written on the host\n"  # at once

    # the shell starts in the host's current directory where it is mounted; elsewhere in the guest home
    assert _shell_in(torpor, rw / "sub", "m", "pwd").stdout.strip() == f"{grw}/sub"
    away = _shell_in(torpor, torpor.home, "m", "pwd")
    assert away.stdout.strip().endswith(".linux") and "is not mounted" in away.stderr
    assert _shell_in(torpor, rw / "sub", "--workdir", "/tmp", "m", "pwd").stdout.strip() == "/tmp"

    # each reverse-sshfs mount reads ahead 1 MiB (FUSE's 128 KiB default halves sequential reads: bench/mounts.py)
    assert torpor.sh("m", "cat /sys/class/bdi/0:*/read_ahead_kb").split().count("1024") == 2

    mounts = torpor.status("m")["mounts"]
    assert [(m["location"], m["writable"], m["up"]) for m in mounts] == [(gro, False, True), (grw, True, True)]

    # A process reading one mount and appending to the other, with its cwd in one, through a save and restore
    torpor.sh("m", WORKER.format(rw=grw, ro=gro))
    assert wait_for(lambda: (rw / "progress.log").exists() and len(_progress(rw)) >= 5)
    torpor.run("stop", "m")
    before = _progress(rw)
    (ro / "hello.txt").write_text("changed while saved\n")
    started = torpor.run("start", "m")
    out = started.stdout + started.stderr
    assert "restored in" in out and "could not keep" not in out, out
    assert wait_for(lambda: len(_progress(rw)) >= len(before) + 5)
    after = _progress(rw)
    assert {pid for pid, _ in after} == {before[0][0]}, "the same process goes on"
    assert [n for _, n in after] == list(range(1, len(after) + 1)), "its descriptors go on where they were"
    assert torpor.sh("m", f'cat "{gro}/hello.txt"') == "changed while saved\n"
    assert all(m["up"] for m in torpor.info("m")["mounts"])

    # a snapshot taken while it runs, applied later: the mounts and the process are back as they were then
    torpor.run("snapshot", "create", "m", "--tag", "s1")
    at_snapshot = len(_progress(rw))
    assert wait_for(lambda: len(_progress(rw)) >= at_snapshot + 5)
    applied = torpor.run("snapshot", "apply", "m", "--tag", "s1", "--force")
    assert "restored in" in applied.stderr and "could not keep" not in applied.stderr, applied.stderr
    count = len(_progress(rw))
    assert wait_for(lambda: len(_progress(rw)) >= count + 5)
    tail = _progress(rw)[count:]
    assert {pid for pid, _ in tail} == {before[0][0]}
    assert tail[0][1] <= at_snapshot + 3, "the process resumed from the snapshot's point"
    assert torpor.sh("m", f"cat {grw}/h.txt") == "written on the host\n"
    torpor.run("stop", "--no-save", "m")


def test_a_missing_host_directory_is_refused_before_anything_starts(torpor: Torpor) -> None:
    missing = torpor.home / "no such dir"
    torpor.run("create", "--name", "x", str(write_template(torpor, "x", _body(missing, torpor.home))))
    proc = torpor.run("start", "x", check=False)
    assert proc.returncode != 0
    assert "does not exist on the host" in proc.stderr and "mkdir -p" in proc.stderr, proc.stderr
    assert not (torpor.dir("x") / "disk.qcow2").exists()
    assert not (torpor.dir("x") / "qemu.pid").exists()


@pytest.mark.parametrize("kind", ["9p", "virtiofs"])
def test_9p_and_virtiofs_mounts_are_unmounted_for_a_save_and_mounted_again_after(
    torpor: Torpor, image_cache: Path, kind: str
) -> None:
    if kind == "virtiofs":  # QEMU's C virtiofsd, from Debian 12's qemu-system-common
        torpor.env["TORPOR_VIRTIOFSD"] = str(debian12_qemu(image_cache).parent / "usr/lib/qemu/virtiofsd")
    ro, rw = _dirs(torpor)
    inner = rw / "sub" / "inner"  # a mount inside another: unmounted first, mounted after it
    nested = f"  - location: {json.dumps(str(ro))}\n    mountPoint: {json.dumps(str(inner))}\n"
    torpor.run(
        "create", "--name", "p", str(write_template(torpor, "p", f"mountType: {kind}\n" + _body(ro, rw) + nested))
    )
    torpor.run("start", "p")
    gro, grw = str(ro), str(rw)
    assert torpor.sh("p", f"cat {inner}/hello.txt") == "from the host\n"
    assert torpor.sh("p", f'cat "{gro}/hello.txt"') == "from the host\n"
    refused = torpor.run("shell", "p", "sh", "-c", f'echo x > "{gro}/new.txt"', check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
    # 9p and virtiofs show the host's owners as they are (sshfs maps yours to the guest user's): root's here.
    torpor.sh("p", f"echo from the guest | sudo tee {grw}/g.txt")
    assert (rw / "g.txt").read_text() == "from the guest\n"
    assert [(m["mountType"], m["up"]) for m in torpor.info("p")["mounts"]] == [(kind, True)] * 3

    # Idle mounts: unmounted for the save, mounted again by the time start returns, the host's change seen.
    torpor.run("stop", "p")
    (ro / "hello.txt").write_text("changed while saved\n")
    started = torpor.run("start", "p")
    assert "restored in" in started.stderr and "could not keep" not in started.stderr, started.stderr
    assert torpor.sh("p", f'cat "{gro}/hello.txt"') == "changed while saved\n"
    assert torpor.sh("p", f"cat {inner}/hello.txt") == "changed while saved\n"
    assert all(m["up"] for m in torpor.info("p")["mounts"])

    # A busy one: the process keeping it busy is stopped so that the VM can be saved, and start says so.
    torpor.sh("p", f"cd {grw} && setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /dev/shm/busy.pid")
    pid = torpor.sh("p", "cat /dev/shm/busy.pid").strip()
    torpor.run("stop", "p")
    started = torpor.run("start", "p")
    assert f"process {pid} sleep (stopped at the save: it kept the {kind} mount {grw} busy)" in started.stderr
    assert torpor.sh("p", f"cat {grw}/g.txt") == "from the guest\n"
    assert torpor.sh("p", f"kill -0 {pid} 2>/dev/null || echo gone").strip() == "gone"

    # Snapshots unmount and mount again around their pause too; a busy mount refuses one (the VM goes on).
    torpor.sh("p", f"cd {grw} && setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /dev/shm/busy.pid")
    refused = torpor.run("snapshot", "create", "p", "--tag", "s", check=False)
    assert refused.returncode != 0 and f"a {kind} mount is in use" in refused.stderr, refused.stderr
    assert torpor.sh("p", f"cat {grw}/g.txt") == "from the guest\n"
    torpor.sh("p", "kill $(cat /dev/shm/busy.pid); sleep 0.5")
    torpor.run("snapshot", "create", "p", "--tag", "s")
    assert torpor.sh("p", f"cat {grw}/g.txt") == "from the guest\n"
    applied = torpor.run("snapshot", "apply", "p", "--tag", "s", "--force")
    assert "restored in" in applied.stderr and "could not keep" not in applied.stderr, applied.stderr
    assert torpor.sh("p", f"cat {grw}/g.txt {inner}/hello.txt") == "from the guest\nchanged while saved\n"
    torpor.run("stop", "--no-save", "p")
