"""Benchmark: cold boot against save and restore of the default guest, measured side by side in one run.

    python bench/save_restore.py [--touch-mib 200] [--rounds 2] [--configs copy:1GiB,copy:4GiB,...]

For each configuration (saveMode:memory) and round: a cold `torpor start` (to ready: SSH answers), TOUCH MiB of
random data written into guest RAM (/dev/shm), `torpor stop --save`, `torpor start` (restore, to ready).  Times
are wall-clock times of the CLI commands, as a user sees them (median of the rounds).  The restore is broken
down with the host agent's event timestamps: CLI and host-agent start-up until the agent's first event, QEMU
and the guest until ready, and the CLI noticing it.
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


def torpor(env: dict[str, str], *args: str) -> tuple[float, float, float, str]:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "--no-tty", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    t1 = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"torpor {' '.join(args)} failed:\n{proc.stderr}")
    return t1 - t0, t0, t1, proc.stdout + proc.stderr


def events(home: Path, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (home / name / "ha.stdout.log").read_text().splitlines()]


def allocated_mib(path: Path) -> float:
    return path.stat().st_blocks * 512 / 2**20 if path.exists() else 0.0


def measure(env: dict[str, str], home: Path, mode: str, memory: str, *, touch: int, rounds: int) -> dict[str, float]:
    name = f"b-{mode}-{memory.lower()}"
    (home / f"{name}.yaml").write_text(
        f"images: [{{location: build:default}}]\nmemory: {memory}\ncpus: 2\nsaveMode: {mode}\n"
    )
    torpor(env, "create", "--name", name, str(home / f"{name}.yaml"))
    torpor(env, "start", name)  # the first boot installs the guest onto its disk: not measured
    torpor(env, "stop", name)
    rows: dict[str, list[float]] = {}
    for i in range(rounds):
        cold, *_ = torpor(env, "start", name)
        torpor(env, "shell", name, "sh", "-c", f"dd if=/dev/urandom of=/dev/shm/t bs=1M count={touch} 2>/dev/null")
        save, *_ = torpor(env, "stop", "--save", name)
        exiting = events(home, name)[-1]
        disk = allocated_mib(home / name / "saved" / "state.bin") + allocated_mib(home / name / "memory.ram")
        restore, t0, t1, out = torpor(env, "start", name)
        if "restored in" not in out:
            raise SystemExit(f"{name} round {i}: the start did not restore:\n{out}")
        evs = {str(e["type"]): float(e["time"]) for e in events(home, name)}  # type: ignore[arg-type]
        torpor(env, "stop", name)
        sample = {
            "cold": cold,
            "save": save,
            "save_qemu": float(exiting["saveSeconds"]),  # type: ignore[arg-type]
            "disk": disk,
            "restore": restore,
            "startup": evs["starting"] - t0,
            "vm": evs["ready"] - evs["starting"],
            "notice": t1 - evs["ready"],
        }
        for k, v in sample.items():
            rows.setdefault(k, []).append(v)
        print(f"{name} round {i + 1}: cold {cold:.2f} s, save {save:.2f} s, restore {restore:.2f} s", flush=True)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--touch-mib", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default="copy:1GiB,copy:4GiB,instant:1GiB,instant:4GiB")
    args = ap.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs.split(",")]
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-", dir="/tmp"))
    env = dict(os.environ, TORPOR_HOME=str(home))
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for mode, memory in configs:
            results[(mode, memory)] = measure(env, home, mode, memory, touch=args.touch_mib, rounds=args.rounds)
    finally:
        for d in home.iterdir():
            if d.is_dir():
                subprocess.run(
                    [sys.executable, "-m", "torpor", "stop", "--force", d.name],
                    env=env,
                    capture_output=True,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)

    print(f"\ndefault guest, {args.touch_mib} MiB of random data in guest RAM, median of {args.rounds} rounds")
    head = f"{'saveMode':<9}{'RAM':>6}{'cold':>8}{'save':>8}{'(QEMU)':>8}{'on disk':>10}{'restore':>9}"
    head += f"{'startup':>9}{'VM+guest':>10}{'notice':>8}{'ratio':>7}"
    print(head)
    for (mode, memory), r in results.items():
        print(
            f"{mode:<9}{memory:>6}{r['cold']:>7.2f}s{r['save']:>7.2f}s{r['save_qemu']:>7.2f}s"
            f"{r['disk']:>6.0f} MiB{r['restore']:>8.2f}s{r['startup']:>8.2f}s{r['vm']:>9.2f}s"
            f"{r['notice']:>7.2f}s{r['restore'] / r['cold']:>7.2f}"
        )
    print("ratio = restore / cold boot; startup = CLI and host agent until the agent's first event;")
    print("on disk = allocated blocks of the saved state plus, in instant mode, the guest RAM file")
    for mode in ("copy", "instant"):
        small, big = results.get((mode, "1GiB")), results.get((mode, "4GiB"))
        if small and big:
            print(
                f"{mode}: 4 GiB / 1 GiB guest with the same touched memory: save x{big['save'] / small['save']:.2f}, "
                f"restore x{big['restore'] / small['restore']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
