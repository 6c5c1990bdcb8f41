"""What saveMode: instant costs while the VM runs: host disk writes caused by a memory-busy guest.

    python bench/instant_running_cost.py [--seconds 60] [--churn-mib 200] [--markdown [bench/RESULTS.md]]

Boots the default guest in copy and in instant mode, side by side in one run, and while each runs the same
workload (rewriting CHURN MiB of random data in guest RAM every 10 s) counts the bytes the host wrote to the
block device under the instance directory (/proc/diskstats) and the RAM file's allocated size.  With --markdown
the table also goes, with the date, machine, versions and command, into its section of the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import results as results_md  # noqa: E402


def torpor(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "--no-tty", *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"torpor {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def device_of(path: Path) -> str:
    dev = os.stat(path).st_dev
    name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
    return name


def sectors_written(device: str) -> int:
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == device:
            return int(f[9])
    raise SystemExit(f"{device} not in /proc/diskstats")


def run(env: dict[str, str], home: Path, mode: str, seconds: int, churn: int) -> tuple[float, float]:
    name = f"rc-{mode}"
    (home / f"{name}.yaml").write_text(f"images: [{{location: build:default}}]\nmemory: 1GiB\nsaveMode: {mode}\n")
    torpor(env, "create", "--name", name, str(home / f"{name}.yaml"))
    torpor(env, "start", name)
    device = device_of(home / name)
    subprocess.run(["sync"], check=True)
    before = sectors_written(device)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        torpor(env, "shell", name, "sh", "-c", f"dd if=/dev/urandom of=/dev/shm/churn bs=1M count={churn} 2>/dev/null")
        time.sleep(max(0.0, min(10.0, deadline - time.monotonic())))
    written = (sectors_written(device) - before) * 512 / 2**20
    ram = home / name / "memory.ram"
    allocated = ram.stat().st_blocks * 512 / 2**20 if ram.exists() else 0.0
    torpor(env, "stop", "--force", name)
    return written, allocated


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--churn-mib", type=int, default=200)
    results_md.add_markdown_option(ap)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-", dir="/tmp"))
    env = dict(os.environ, TORPOR_HOME=str(home))
    qemu = {"installed": str(json.loads(torpor(env, "info", "--format", "json"))["qemu"]["version"])}
    try:
        results = {mode: run(env, home, mode, args.seconds, args.churn_mib) for mode in ("copy", "instant")}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    what = f"{args.seconds} s of a 1 GiB guest rewriting {args.churn_mib} MiB of RAM every 10 s"
    print(f"\n{what}")
    print(f"{'saveMode':<10}{'host disk writes':>18}{'RAM file allocated':>20}")
    for mode, (written, allocated) in results.items():
        print(f"{mode:<10}{written:>14.0f} MiB{allocated:>16.0f} MiB")
    if args.markdown is not None:
        rows = [[mode, f"{w:.0f}", f"{a:.0f}"] for mode, (w, a) in results.items()]
        body = (
            results_md.label(qemu, sys.argv)
            + f"\n{what}, default guest.\n\n"
            + results_md.table(["saveMode", "host disk writes (MiB)", "RAM file allocated (MiB)"], rows)
        )
        results_md.write_section(args.markdown, "instant_running_cost", "Instant mode's running cost", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
