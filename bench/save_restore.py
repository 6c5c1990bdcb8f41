"""Benchmark: cold boot against save and restore of the default guest, measured side by side in one run.

    python bench/save_restore.py [--touch-mib 200] [--memory 1GiB] [--rounds 3]

Each round: a cold `torpor start` (to ready: SSH answers), TOUCH MiB of random data written into guest RAM
(/dev/shm), `torpor stop --save`, `torpor start` (restore, to ready).  Times are wall-clock times of the CLI
commands, as a user sees them; the table shows the median of the rounds.
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


def torpor(env: dict[str, str], *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "--no-tty", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"torpor {' '.join(args)} failed:\n{proc.stderr}")
    return elapsed, proc.stdout + proc.stderr


def last_event(home: Path, name: str, kind: str) -> dict[str, object]:
    lines = (home / name / "ha.stdout.log").read_text().splitlines()
    return next(json.loads(line) for line in reversed(lines) if json.loads(line)["type"] == kind)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--touch-mib", type=int, default=200)
    ap.add_argument("--memory", default="1GiB")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-", dir="/tmp"))
    env = dict(os.environ, TORPOR_HOME=str(home))
    (home / "bench.yaml").write_text(f"images: [{{location: build:default}}]\nmemory: {args.memory}\ncpus: 2\n")
    rows: dict[str, list[float]] = {"cold": [], "save": [], "save_qemu": [], "restore": [], "size": []}
    try:
        torpor(env, "create", "--name", "b", str(home / "bench.yaml"))
        torpor(env, "start", "b")  # first boot installs the guest onto its disk: not measured
        torpor(env, "stop", "b")
        for i in range(args.rounds):
            cold, _ = torpor(env, "start", "b")
            torpor(
                env,
                "shell",
                "b",
                "sh",
                "-c",
                f"dd if=/dev/urandom of=/dev/shm/touched bs=1M count={args.touch_mib} 2>/dev/null",
            )
            save, _ = torpor(env, "stop", "--save", "b")
            ev = last_event(home, "b", "exiting")
            restore, out = torpor(env, "start", "b")
            if "restored in" not in out:
                raise SystemExit(f"round {i}: the start did not restore:\n{out}")
            torpor(env, "stop", "b")
            rows["cold"].append(cold)
            rows["save"].append(save)
            rows["save_qemu"].append(float(ev["saveSeconds"]))  # type: ignore[arg-type]
            rows["restore"].append(restore)
            rows["size"].append(float(ev["stateSize"]) / 2**20)  # type: ignore[arg-type]
            print(f"round {i + 1}: cold {cold:.2f} s, save {save:.2f} s, restore {restore:.2f} s", flush=True)
    finally:
        subprocess.run(
            [sys.executable, "-m", "torpor", "stop", "--force", "b"], env=env, capture_output=True, check=False
        )
        shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print()
    print(
        f"default guest, {args.memory} RAM, {args.touch_mib} MiB of random data in guest RAM, "
        f"median of {args.rounds} rounds (TCG unless KVM works here)"
    )
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'cold boot: torpor start to ready':<44}{med['cold']:>10.2f} s")
    print(f"{'save: torpor stop --save (whole command)':<44}{med['save']:>10.2f} s")
    print(f"{'  of which QEMU writing the state':<44}{med['save_qemu']:>10.2f} s")
    print(f"{'state size':<44}{med['size']:>8.0f} MiB")
    print(f"{'restore: torpor start to ready':<44}{med['restore']:>10.2f} s")
    print(f"{'ratio restore / cold boot':<44}{med['restore'] / med['cold']:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
