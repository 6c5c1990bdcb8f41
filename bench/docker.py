"""Benchmark: the Docker VM (template:docker), cold start against restore with containers running, side by side
in one run.

    python bench/docker.py [--rounds 3] [--markdown [bench/RESULTS.md]]

One instance of template:docker (2 GiB, 2 CPUs).  Before the rounds it boots once and starts, from an image made
with `docker import` (no registry here): a web server on a published port, a container appending fsynced lines
to a volume, both `--restart always`, so that a cold boot starts them again as dockerd comes up.  Each round:

- a cold `torpor start` (until `docker info` answers in the guest), then a `docker exec` counter in the web
  container;
- `torpor stop --save`, the raw QEMU save and load of a copy of the same state (bench/rawqemu.py);
- `torpor start` (the restore, until ready: the forwarded docker.sock is up by then), and at once, from the host,
  `GET /containers/json` through the forwarded socket (what `docker ps` sends), timed from `start`'s return;
  then `torpor stop`.

Times are wall-clock times of the CLI commands; medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rawqemu  # noqa: E402
from bench import results as results_md  # noqa: E402
from torpor.store import savedstate  # noqa: E402

SCRIPT = Path(sys.executable).with_name("torpor")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "torpor"]
NAME = "docker"
IMAGE = (
    "set -e; t=$(mktemp -d); mkdir -p $t/bin $t/www $t/tmp; cp /bin/busybox $t/bin/; "
    "for a in sh httpd cat echo sleep sync; do ln -s busybox $t/bin/$a; done; echo hello > $t/www/index.html; "
    'tar -C $t -c . | docker import -c "ENV PATH=/bin" - torpor/busybox >/dev/null'
)
CONTAINERS = (
    "docker run -d --restart always --name web -p 18474:80 torpor/busybox httpd -f -p 80 -h /www && "
    "docker run -d --restart always --name writer -v data:/data torpor/busybox "
    "sh -c 'i=0; while true; do i=$((i+1)); echo $i >> /data/log; sync; sleep 0.2; done'"
)
COUNTER = "docker exec -d web sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done'"


def torpor(env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """Run torpor; return its wall time, the moment it returned and its output."""
    t0 = time.monotonic()
    proc = subprocess.run([*COMMAND, "--no-tty", *args], env=env, capture_output=True, text=True, check=False)
    t1 = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"torpor {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return t1 - t0, t1, proc.stdout + proc.stderr


def docker_ps(sock: Path) -> int:
    """`docker ps` over the forwarded socket (its API request, by hand): the number of running containers."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(b"GET /containers/json HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"docker ps through {sock}: {head!r}")
    return len(json.loads(body))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    results_md.add_markdown_option(ap)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="torpor-bench-docker-", dir="/tmp"))
    env = dict(os.environ, TORPOR_HOME=str(home))
    sock = home / NAME / "sock" / "docker.sock"
    rows: dict[str, list[float]] = {}
    try:
        torpor(env, "start", NAME)  # made from template:docker; the first boot installs the guest
        torpor(env, "shell", "--workdir", "/", NAME, "sh", "-c", f"{IMAGE} && {CONTAINERS}")
        torpor(env, "stop", NAME)
        for r in range(args.rounds):
            cold, _, _ = torpor(env, "start", NAME)
            torpor(env, "shell", "--workdir", "/", NAME, "sh", "-c", COUNTER)
            if docker_ps(sock) != 2:
                raise SystemExit("the containers did not come back with the cold boot")
            save, _, _ = torpor(env, "stop", "--save", NAME)
            manifest = json.loads((home / NAME / "saved" / "manifest.json").read_text())
            copy = home / "raw-input.bin"
            savedstate.sparse_copy(home / NAME / "saved" / "state.bin", copy)
            restore, returned, out = torpor(env, "start", NAME)
            ps_count = docker_ps(sock)
            ps_after = time.monotonic() - returned
            if "restored in" not in out or ps_count != 2:
                raise SystemExit(f"round {r + 1}: no restore with both containers:\n{out}")
            torpor(env, "stop", NAME)
            try:
                raw = rawqemu.measure(manifest, copy, home / "raw-state.bin")
            finally:
                copy.unlink()
            sample = {"cold": cold, "save": save, "restore": restore, "ps_after": ps_after, **raw}
            for k, v in sample.items():
                rows.setdefault(k, []).append(v)
            print(
                f"round {r + 1}: cold {cold:.2f} s, save {save:.2f} s (raw {raw['raw_save']:.2f} s), "
                f"restore {restore:.2f} s (raw load {raw['raw_restore']:.2f} s), docker ps {ps_after:.3f} s after",
                flush=True,
            )
    finally:
        subprocess.run([*COMMAND, "--no-tty", "stop", "--force", NAME], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    report({k: statistics.median(v) for k, v in rows.items()}, args)


def report(med: dict[str, float], args: argparse.Namespace) -> None:
    table = results_md.table(
        [
            "cold start to docker ready",
            "restore, containers running",
            "restore / cold",
            "docker ps through the socket, after start returns",
            "`stop --save`",
            "raw QEMU save",
            "save / raw",
        ],
        [
            [
                f"{med['cold']:.2f} s",
                f"{med['restore']:.2f} s",
                f"{100 * med['restore'] / med['cold']:.1f} %",
                f"{med['ps_after']:.3f} s",
                f"{med['save']:.2f} s",
                f"{med['raw_save']:.2f} s",
                f"{med['save'] / med['raw_save']:.2f}x",
            ]
        ],
    )
    print(table)
    if args.markdown is not None:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False)
        body = (
            results_md.label({"installed": qemu.stdout.splitlines()[0]}, sys.argv)
            + f"\ntemplate:docker (2 GiB, 2 CPUs) under TCG, two containers and a `docker exec` running; medians of "
            f"{args.rounds} rounds.  raw QEMU save: stop, migrate, fsync of the same state by hand over QMP.\n\n"
            + table
        )
        results_md.write_section(args.markdown, "docker", "The Docker VM", body)


if __name__ == "__main__":
    main()
