"""Benchmark: work through a mount against the same work on the guest's own disk, and the restore of an instance
with two mounts against one without, side by side in one run.

    python bench/mounts.py [--rounds 3] [--mib 256] [--files 10000] [--markdown [bench/RESULTS.md]]

Default guests (template:default's image, 1 GiB, 2 CPUs), each with two mounts of host directories, one
read-only and one writable: one of mountType reverse-sshfs, one of 9p, one of virtiofs when the host has a
virtiofsd (as torpor finds it: $TORPOR_VIRTIOFSD, PATH, the distributions' paths), and one guest without mounts.
In each round, each measured inside a guest (its own clock around the command, its page cache dropped first):

- sequential read of a MIB MiB file (`dd bs=1M`), from the read-only mount and from the guest's disk;
- sequential write of MIB MiB with a final fsync, to the writable mount and to the guest's disk;
- a metadata walk: `find` and `stat` of FILES small files in a tree of 100 directories, through the read-only
  mount and on the guest's disk;

Before those rounds, with the guests as they booted (so that their states are alike), `torpor stop --save` and
`torpor start` (the restore, to ready) of each instance, one after the other, ROUNDS times.
Figures are medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import results as results_md  # noqa: E402
from torpor.driver.qemu import virtiofsd  # noqa: E402
from torpor.errors import DriverError  # noqa: E402

SCRIPT = Path(sys.executable).with_name("torpor")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "torpor"]


def torpor(env: dict[str, str], *args: str) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([*COMMAND, "--no-tty", *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"torpor {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def timed_in_guest(env: dict[str, str], name: str, command: str) -> float:
    """Seconds ``command`` takes in the guest by the guest's clock (its uptime, to 10 ms), its page cache dropped
    first."""
    script = (
        "sync; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null; "
        "up() { cut -d' ' -f1 /proc/uptime; }; "
        f"t0=$(up); {command} >/dev/null 2>&1 || echo FAILED; t1=$(up); "
        'echo "$t0 $t1"'
    )
    _, out = torpor(env, "shell", "--workdir", "/", name, "sh", "-c", script)
    line = out.strip().splitlines()[-1]
    if "FAILED" in out:
        raise SystemExit(f"in the guest, {command} failed:\n{out}")
    t0, t1 = (float(x) for x in line.split())
    return t1 - t0


def mount_types() -> dict[str, str]:
    """The mount types to measure, by instance name: all of them, virtiofs only where the host has a virtiofsd."""
    types = dict(TYPES)
    try:
        virtiofsd.find()
    except DriverError as e:
        print(f"not measuring virtiofs: {e}", file=sys.stderr)
        del types["virtiofs"]
    return types


def make_tree(root: Path, files: int) -> None:
    per_dir = max(1, files // 100)
    for d in range(100):
        sub = root / f"d{d:02d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:04d}.txt").write_text(f"{d} {f}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    results_md.add_markdown_option(ap)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="torpor-bench-mounts-", dir="/tmp"))
    env = dict(os.environ, TORPOR_HOME=str(home))
    ro, rw = home / "host-ro", home / "host-rw"
    ro.mkdir()
    rw.mkdir()
    with (ro / "big.bin").open("wb") as f:
        f.write(os.urandom(args.mib * 2**20))
    make_tree(ro / "tree", args.files)
    base = "images: [{location: 'build:default'}]\nmemory: 1GiB\ncpus: 2\nsaveOnStop: true\n"
    mounts = f"mounts:\n  - location: {json.dumps(str(ro))}\n  - location: {json.dumps(str(rw))}\n    writable: true\n"
    types = mount_types()
    instances = {key: f"{base}mountType: {kind}\n{mounts}" for key, kind in types.items()} | {"without": base}
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    try:
        for name, text in instances.items():
            (home / f"{name}.yaml").write_text(text)
            torpor(env, "create", "--name", name, str(home / f"{name}.yaml"))
            torpor(env, "start", name)
        # The restores first, interleaved, while the guests have done the same (nothing): a guest that has read
        # through a mount has touched more memory, which a save writes and a restore loads.
        for _ in range(args.rounds):
            for name in instances:
                torpor(env, "stop", name)
                seconds, out = torpor(env, "start", name)
                if "restored in" not in out:
                    raise SystemExit(f"{name} did not restore:\n{out}")
                add(f"restore-{name}", seconds)
        # The guest disk's copies of the same data (the first boot installed the guest; these stay on its disk).
        copy = f"sudo mkdir -m 777 /var/bench && cp -r {ro}/big.bin {ro}/tree /var/bench/ && sync"
        torpor(env, "shell", "--workdir", "/", "sshfs", "sh", "-c", copy)
        write = f"bs=1M count={args.mib} conv=fsync"
        stat = "find {} -type f | xargs stat -c %s"
        for r in range(args.rounds):
            add("read-disk", timed_in_guest(env, "sshfs", "dd if=/var/bench/big.bin of=/dev/null bs=1M"))
            add("write-disk", timed_in_guest(env, "sshfs", f"dd if=/dev/zero of=/var/bench/out.bin {write}"))
            add("meta-disk", timed_in_guest(env, "sshfs", stat.format("/var/bench/tree")))
            for name in types:
                add(f"read-{name}", timed_in_guest(env, name, f"dd if={ro}/big.bin of=/dev/null bs=1M"))
                # 9p and virtiofs show the host's owners: as root in the guest, as the host's root owns it here
                add(f"write-{name}", timed_in_guest(env, name, f"sudo dd if=/dev/zero of={rw}/out.bin {write}"))
                add(f"meta-{name}", timed_in_guest(env, name, stat.format(f"{ro}/tree")))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    finally:
        for name in instances:
            subprocess.run([*COMMAND, "--no-tty", "stop", "--force", name], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)

    report({k: statistics.median(v) for k, v in rows.items()}, types, args)


TYPES = {"sshfs": "reverse-sshfs", "ninep": "9p", "virtiofs": "virtiofs"}  # instance name: mountType


def report(med: dict[str, float], types: dict[str, str], args: argparse.Namespace) -> None:
    mib = args.mib

    def row(what: str, key: str, rate: bool = False) -> list[str]:
        cells = [what]
        for name in [*types, "disk"]:
            v = med[f"{key}-{name}"]
            cells.append(f"{v:.2f} s" + (f" ({mib / v:.0f} MiB/s)" if rate else ""))
        cells += [f"{med[f'{key}-{name}'] / med[f'{key}-disk']:.1f}x" for name in types]
        return cells

    table = results_md.table(
        ["work", *types.values(), "guest's disk", *(f"{kind} / disk" for kind in types.values())],
        [
            row(f"sequential read, {mib} MiB", "read", rate=True),
            row(f"sequential write + fsync, {mib} MiB", "write"),
            row(f"find + stat, {args.files} files", "meta"),
        ],
    )
    without = med["restore-without"]
    restore = results_md.table(
        ["instance", "restore (`torpor start` after `stop --save`)", "against no mounts"],
        [
            *(
                [f"two {kind} mounts", f"{med[f'restore-{n}']:.2f} s", f"{med[f'restore-{n}'] - without:+.2f} s"]
                for n, kind in types.items()
            ),
            ["no mounts", f"{without:.2f} s", ""],
        ],
    )
    print(table)
    print(restore)
    if args.markdown is not None:
        versions = {
            "installed": subprocess.run(
                ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0]
        }
        if "virtiofs" in types:
            versions["virtiofsd"] = virtiofsd.find()
        body = (
            results_md.label(versions, sys.argv)
            + f"\nThe default guest under TCG, medians of {args.rounds} rounds.\n\n"
            + table
            + "\n"
            + restore
        )
        results_md.write_section(args.markdown, "mounts", "Mounts", body)


if __name__ == "__main__":
    main()
