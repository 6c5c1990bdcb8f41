"""Benchmark: cold boot against save and restore, torpor against raw QEMU, side by side in one run.

    python bench/save_restore.py [--touch-mib 200] [--rounds 2] [--configs copy:1GiB,copy:4GiB:debian12,...]
                                 [--markdown [bench/RESULTS.md]]

A configuration is saveMode:memory[:qemu[:guest]], qemu being "installed" (default) or "debian12" (Debian 12's own
QEMU 7.2, unpacked beside the installed one as the tests do), guest "default" (torpor's small guest) or "debian"
(template:debian: systemd, cloud-init), "cloud-bios" or "cloud-uefi" (the Debian cloud images of tests/cloudimage.py,
booted by SeaBIOS and GRUB, or OVMF and GRUB).  For each configuration and round: a cold `torpor start` (to ready: SSH
answers), TOUCH MiB of random data written into guest RAM (/dev/shm), `torpor stop --save`; then `torpor start`
(restore, to ready); then `torpor snapshot create` and `torpor snapshot apply` of the running guest; then `torpor
stop --save`, a pause of IDLE seconds, `torpor start` (the idle restore), the same again with the host's free page
reporting held back (below), and `torpor stop`; then the raw QEMU baseline on a copy of the saved state
(bench/rawqemu.py: the same QEMU loads it and saves it again by hand over QMP, plus fsync).  Times are wall-clock
times of the CLI commands (the installed `torpor` script), as a user sees them (median of the rounds).

Each round measures every configuration once, one after another, so that the machine's slow spells fall on all
configurations alike and the ratios between configurations compare figures taken minutes apart, not half an hour.
Between two configurations the bench syncs, so that none is timed while the kernel writes out what the last one
left.

torpor's restore runs straight after the save and the raw load straight after the instance's QEMU has exited, so
that each finds memory as a QEMU of that guest has just left it: on a host that hands freed memory back to its
hypervisor (free page reporting), memory left idle for a few seconds is slow to touch again (docs/design.md).  In
instant mode the RAM file, the other half of the state, changes once the VM runs again: the raw run gets a copy of
it too.  Users restore states that have waited, so each round also restores after IDLE seconds and prints how much
freed memory the host handed back during the pause, where the kernel counts it; and where root can hold that
reporting back (min_free_ms, which some kernels have), once more with it held from before the save until after the
restore (the "held" restore, as on a host that keeps its freed memory), setting it back after.

The restore is broken down with the host agent's event timestamps: CLI and host agent start-up until the agent's
first event, QEMU and the guest until ready, and the CLI noticing it.

With --markdown the tables are also written, with the date, machine, versions and command, into their section of
the results file (bench/RESULTS.md by default), replacing the section of the last such run; with --section NAME
into a section of that name instead (a run of some configurations, beside the full run's).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rawqemu  # noqa: E402
from bench import results as results_md  # noqa: E402
from torpor.store import savedstate  # noqa: E402

# The `torpor` command as installed (setup.sh), what a user runs; else through the interpreter (runpy: ~5 ms more).
SCRIPT = Path(sys.executable).with_name("torpor")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "torpor"]

# Free memory this host's kernel has handed back to its hypervisor so far (free page reporting), where the
# kernel counts it (this machine's does; upstream kernels have no such counter): the cause of slow idle restores.
REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")
# This machine's kernel also lets root hold the reporting back: a free page goes back only once it has been free
# this many milliseconds (0 here; at most 60000).  The bench holds it during one more pause, to show the idle
# restore on a host that keeps its freed memory (a host that is not a VM, or one without free page reporting).
REPORTING_DELAY = Path("/sys/module/page_reporting/parameters/min_free_ms")
HOLD_MS = 60000


def torpor(env: dict[str, str], *args: str) -> tuple[float, float, float, str]:
    t0 = time.time()
    proc = subprocess.run(
        [*COMMAND, "--no-tty", *args],
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


def reported_kib() -> int | None:
    try:
        return int(REPORTED.read_text())
    except (OSError, ValueError):
        return None


def waited_restore(env: dict[str, str], name: str, idle: float, what: str) -> tuple[float, float]:
    """`torpor stop --save`, a pause of ``idle`` s, then `torpor start`, which must restore: its time, and the MiB of
    freed memory the host handed back to its hypervisor during the pause (nan where the kernel does not count it)."""
    torpor(env, "stop", "--save", name)
    before = reported_kib()
    time.sleep(idle)
    after = reported_kib()
    seconds, _, _, out = torpor(env, "start", name)
    if "restored in" not in out:
        raise SystemExit(f"{what} did not restore:\n{out}")
    return seconds, float("nan") if before is None or after is None else (after - before) / 1024


@contextlib.contextmanager
def reporting_held() -> Iterator[bool]:
    """Free page reporting held back for HOLD_MS while inside, where this host can (True), as it was after."""
    try:
        before = REPORTING_DELAY.read_text().strip()
        REPORTING_DELAY.write_text(str(HOLD_MS))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        REPORTING_DELAY.write_text(before)


def prepare(env: dict[str, str], home: Path, config: tuple[str, ...]) -> str:
    """Create the configuration's instance and boot it once (the first boot installs the guest onto its disk: not
    measured); return its name."""
    mode, memory, qemu, guest = config
    name = f"b-{guest}-{mode}-{memory.lower()}-{qemu}"
    image = f"{{location: 'build:{guest}'}}"
    if guest.startswith("cloud-"):  # a cloud image booted by its firmware (tests/cloudimage.py builds it)
        from tests import cloudimage

        path = cloudimage.build()[guest.removeprefix("cloud-")]
        image = f"{{location: '{path}', digest: '{cloudimage.sha512(path)}'}}"
    (home / f"{name}.yaml").write_text(
        f"images: [{image}]\nmemory: {memory}\ncpus: 2\nsaveMode: {mode}\nbootTimeout: 900\ndisk: 8GiB\n"
    )
    torpor(env, "create", "--name", name, str(home / f"{name}.yaml"))
    torpor(env, "start", name)
    torpor(env, "stop", name)
    return name


def measure(
    env: dict[str, str], home: Path, name: str, *, touch: int, idle: float, i: int
) -> tuple[str, dict[str, float]]:
    """One round of the instance ``name`` (see the docstring); returns the save mechanism and the figures."""
    cold, *_ = torpor(env, "start", name)
    torpor(env, "shell", name, "sh", "-c", f"dd if=/dev/urandom of=/dev/shm/t bs=1M count={touch} 2>/dev/null")
    save, *_ = torpor(env, "stop", "--save", name)
    exiting = events(home, name)[-1]
    disk = allocated_mib(home / name / "saved" / "state.bin") + allocated_mib(home / name / "memory.ram")
    manifest = json.loads((home / name / "saved" / "manifest.json").read_text())
    # A copy of this very state (in instant mode with the RAM file, the other half of it, which changes once
    # the VM runs), measured raw once the instance's QEMU has exited (see the docstring).
    kept = {home / name / "saved" / "state.bin": home / "raw-input.bin"}
    if manifest["mechanism"] == "shared-ram":
        kept[home / name / "memory.ram"] = home / "raw-input.ram"
    for src, dst in kept.items():
        savedstate.sparse_copy(src, dst)
    restore, t0, t1, out = torpor(env, "start", name)
    if "restored in" not in out:
        raise SystemExit(f"{name} round {i + 1}: the start did not restore:\n{out}")
    evs = {str(e["type"]): float(e["time"]) for e in events(home, name)}  # type: ignore[arg-type]
    snap_create, _, _, out = torpor(env, "snapshot", "create", name, "--tag", "b")
    paused = float(out.split("VM paused ")[1].split(" s")[0])
    snap_apply, _, _, out = torpor(env, "snapshot", "apply", name, "--tag", "b", "--force")
    torpor(env, "snapshot", "delete", name, "--tag", "b")
    idle_restore, idle_reported = waited_restore(env, name, idle, f"{name} round {i + 1}: the start after the pause")
    held_restore = held_reported = float("nan")
    with reporting_held() as holding:
        if holding:  # once more, the host keeping what QEMU frees as it quits (the hold starts before the save)
            held_restore, held_reported = waited_restore(
                env, name, idle, f"{name} round {i + 1}: the start after the held pause"
            )
    torpor(env, "stop", name)
    copies = list(kept.values())
    try:
        raw = rawqemu.measure(manifest, copies[0], home / "raw-state.bin", copies[1] if len(copies) > 1 else None)
    finally:
        for copy in copies:
            copy.unlink()
    sample = {
        "cold": cold,
        "save": save,
        "save_qemu": float(exiting["saveSeconds"]),  # type: ignore[arg-type]
        "disk": disk,
        "restore": restore,
        "idle_restore": idle_restore,
        "idle_reported": idle_reported,
        "held_restore": held_restore,
        "held_reported": held_reported,
        "startup": evs["starting"] - t0,
        "vm": evs["ready"] - evs["starting"],
        "notice": t1 - evs["ready"],
        "snap_create": snap_create,
        "snap_paused": paused,
        "snap_apply": snap_apply,
        **raw,
    }
    print(
        f"{name} round {i + 1}: cold {cold:.2f} s, save {save:.2f} s (raw {raw['raw_save']:.2f} s), "
        f"restore {restore:.2f} s (raw {raw['raw_restore']:.2f} s), idle restore {idle_restore:.2f} s "
        f"({idle_reported:.0f} MiB handed back to the hypervisor during the pause), idle restore with freed "
        f"memory kept {held_restore:.2f} s ({held_reported:.0f} MiB handed back), "
        f"snapshot {snap_create:.2f} s, apply {snap_apply:.2f} s",
        flush=True,
    )
    return str(manifest["mechanism"]), sample


def parse_config(text: str) -> tuple[str, str, str, str]:
    """saveMode:memory[:qemu[:guest]] -> (mode, memory, qemu, guest); qemu installed|debian12, guest default,
    debian, cloud-bios or cloud-uefi."""
    mode, memory, qemu, guest = (*text.split(":"), "", "")[:4]
    return mode, memory, qemu or "installed", guest or "default"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--touch-mib", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds a saved state waits before the idle restore")
    ap.add_argument(
        "--configs",
        default="copy:1GiB,copy:4GiB,copy:1GiB:debian12,copy:4GiB:debian12,instant:1GiB,instant:4GiB,"
        "copy:2GiB::debian,instant:2GiB::debian,copy:2GiB::cloud-bios,copy:2GiB::cloud-uefi",
    )
    results_md.add_markdown_option(ap)
    ap.add_argument(
        "--section",
        default="",
        help="write the tables into a section of their own, SECTION, beside the full run's (a run of some guests)",
    )
    args = ap.parse_args()
    configs = [parse_config(c) for c in args.configs.split(",")]
    # torpor's bytecode up to date, as installed: with PYTHONDONTWRITEBYTECODE set, a module edited since it was
    # last compiled would be compiled again by every command and host agent the bench times.
    compileall.compile_dir(ROOT / "torpor", quiet=1)
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-", dir="/tmp"))
    base_env = dict(os.environ, TORPOR_HOME=str(home))
    versions: dict[str, str] = {}
    envs: dict[tuple[str, ...], dict[str, str]] = {}
    names: dict[tuple[str, ...], str] = {}
    used: dict[tuple[str, ...], str] = {}  # the save mechanism of each configuration
    rows: dict[tuple[str, ...], dict[str, list[float]]] = {}
    try:
        for config in configs:
            env = envs[config] = dict(base_env)
            if config[2] == "debian12":
                from tests.integration.qemus import debian12_qemu
                from torpor.store.cache import cache_root

                env["TORPOR_QEMU"] = str(debian12_qemu(cache_root()))
            versions[config[2]] = _qemu_version(env)
            names[config] = prepare(env, home, config)
        for i in range(args.rounds):
            for config in configs:
                used[config], sample = measure(
                    envs[config], home, names[config], touch=args.touch_mib, idle=args.idle, i=i
                )
                for k, v in sample.items():
                    rows.setdefault(config, {}).setdefault(k, []).append(v)
                os.sync()  # what this configuration left for the kernel to write is not written during the next
    finally:
        for d in home.iterdir():
            if d.is_dir():
                subprocess.run(
                    [*COMMAND, "stop", "--force", d.name],
                    env=base_env,
                    capture_output=True,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)
    results: dict[tuple[str, ...], tuple[str, dict[str, float]]] = {
        c: (used[c], {k: statistics.median(v) for k, v in rows[c].items()}) for c in configs
    }
    sections = report(results, versions, args.touch_mib, args.rounds, args.idle)
    if args.markdown is not None:
        body = results_md.label(versions, sys.argv) + "\n" + "\n".join(sections)
        key, title = "save_restore", "Save and restore (bench/save_restore.py)"
        if args.section:
            key, title = f"save_restore-{args.section}", f"Save and restore: {args.section} (bench/save_restore.py)"
        results_md.write_section(args.markdown, key, title, body)
    return 0


def _qemu_version(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [*COMMAND, "info", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(proc.stdout)["qemu"]["version"])


# The main table's columns: (heading, text width, key of the results or a function of them, format).
Column = tuple[str, int, str, str]
COLUMNS: list[Column] = [
    ("cold", 6, "cold", ".2f"),
    ("save", 6, "save", ".2f"),
    ("raw save", 9, "raw_save", ".2f"),
    ("save/raw", 9, "save/raw_save", ".2f"),
    ("restore", 8, "restore", ".2f"),
    ("raw load", 9, "raw_restore", ".2f"),
    ("restore/cold", 13, "restore/cold", ".3f"),
    ("idle restore", 13, "idle_restore", ".2f"),
    ("idle/cold", 10, "idle_restore/cold", ".3f"),
    ("handed back", 12, "idle_reported", ".0f"),
    ("held restore", 13, "held_restore", ".2f"),
    ("held/cold", 10, "held_restore/cold", ".3f"),
    ("touched", 8, "touched", ".0f"),
    ("on disk", 8, "disk", ".0f"),
    ("disk/touched", 13, "disk/touched", ".2f"),
    ("snapshot", 9, "snap_create", ".2f"),
    ("paused", 7, "snap_paused", ".2f"),
    ("apply", 6, "snap_apply", ".2f"),
    ("qmp snap-save", 14, "raw_snapsave", ".2f"),
    ("qmp snap-load", 14, "raw_snapload", ".2f"),
]
LEGEND = (
    "Times in seconds, sizes in MiB. cold = cold `torpor start` to ready; save / restore = `torpor stop --save` / "
    "`torpor start` (restoring) as whole commands; raw save / raw load = the same QEMU saving (stop, migrate, "
    "fsync) and loading the same state by hand over QMP; idle restore = `torpor start` of a state saved IDLE s "
    "before; handed back = MiB of freed memory this host gave back to its hypervisor during that pause (free page "
    "reporting; nan where the kernel does not count it); held restore = the same with that reporting held back "
    f"({REPORTING_DELAY.name} {HOLD_MS} ms) from before the save, as on a host that keeps its freed memory (nan "
    "where it cannot be held); touched = non-zero 4 KiB pages of guest RAM in the state, counted by reading it; "
    "on disk = allocated size of the state (plus the RAM file in instant mode); snapshot / paused / apply = "
    "`torpor snapshot create` of the running guest, how long the VM was paused, `torpor snapshot apply`; qmp "
    "snap-save / snap-load = QMP snapshot-save / snapshot-load jobs (RAM into the qcow2 image) of the same state, "
    "the alternative not taken."
)


def _value(r: dict[str, float], key: str, mode: str) -> float:
    if "/" not in key:
        return r.get(key, float("nan"))
    num, den = key.split("/")
    if num == "save" and mode == "instant":  # the raw save writes the device state only; torpor's also flushes RAM
        return float("nan")
    return r[num] / r[den]


def report(
    results: dict[tuple[str, ...], tuple[str, dict[str, float]]],
    versions: dict[str, str],
    touch: int,
    rounds: int,
    idle: float,
) -> list[str]:
    """Print the tables; return them as Markdown sections (the main table, the breakdowns)."""
    ident = [("guest", 8), ("saveMode", 9), ("RAM", 5), ("QEMU", 8), ("mechanism", 11)]
    rows: list[list[str]] = []
    for (mode, memory, qemu, guest), (mechanism, r) in results.items():
        cells = [guest, mode, memory, versions[qemu], mechanism]
        for _, _, key, fmt in COLUMNS:
            v = _value(r, key, mode)
            cells.append("" if math.isnan(v) and "/" in key else format(v, fmt))  # a nan ratio: not applicable
        rows.append(cells)
    widths = [w for _, w in ident] + [w for _, w, _, _ in COLUMNS]
    header = [h for h, _ in ident] + [h for h, _, _, _ in COLUMNS]
    print(f"\n{touch} MiB of random data in guest RAM, median of {rounds} rounds, idle pause {idle:.0f} s")
    for line in [header, *rows]:
        pairs = zip(line, widths, strict=True)
        print("".join(f"{c:<{w}}" if i < len(ident) else f"{c:>{w}}" for i, (c, w) in enumerate(pairs)))
    print(LEGEND.replace("IDLE", f"{idle:.0f}"))

    breakdown: list[list[str]] = []
    saves: list[list[str]] = []
    for (mode, memory, qemu, guest), (_, r) in results.items():
        who = [guest, mode, memory, versions[qemu]]
        breakdown.append(
            [*who, *(f"{r[k]:.3f}" for k in ("startup", "vm", "notice")), f"{r['startup'] + r['notice']:.3f}"]
        )
        if mode != "instant":
            saves.append(
                [
                    *who,
                    f"{r['save']:.2f}",
                    f"{r['raw_save']:.2f}",
                    f"{r['save'] / r['raw_save']:.2f}",
                    f"{r['raw_save_wb']:.2f}",
                    f"{r['save'] / r['raw_save_wb']:.2f}",
                ]
            )
    scaling: list[list[str]] = []
    for qemu, version in versions.items():
        for mode in ("copy", "instant"):
            small, big = results.get((mode, "1GiB", qemu, "default")), results.get((mode, "4GiB", qemu, "default"))
            if small and big:
                s, b = small[1], big[1]
                scaling.append(
                    [
                        mode,
                        version,
                        *(f"{b[k] / s[k]:.2f}" for k in ("save", "restore", "idle_restore", "disk")),
                    ]
                )
    who_h = ["guest", "saveMode", "RAM", "QEMU"]
    extra = [
        (
            "Where a restore's time goes (medians, s): torpor = CLI and host agent until QEMU is launched, plus the "
            "CLI noticing ready; the rest is QEMU and the guest until ready.",
            [*who_h, "CLI + agent start", "QEMU + guest", "CLI notices", "torpor"],
            breakdown,
        ),
        (
            "`stop --save` against raw QEMU saves of the same state (medians, s): raw = stop, migrate, then fsync; "
            "raw+wb = the same with the file written out while QEMU writes it, as torpor's save does.",
            [*who_h, "save", "raw", "save/raw", "raw+wb", "save/raw+wb"],
            saves,
        ),
        (
            "The 4 GiB guest against the 1 GiB guest with the same touched memory (ratios of medians).",
            ["saveMode", "QEMU", "save", "restore", "idle restore", "state on disk"],
            scaling,
        ),
    ]
    for text, head, body in extra:
        if body:
            print(f"\n{text}")
            for row in [head, *body]:
                print("  " + "  ".join(f"{c:>{max(len(h), 6)}}" for c, h in zip(row, head, strict=True)))
    markdown = [
        f"{touch} MiB of random data written into guest RAM; median of {rounds} rounds; idle pause {idle:.0f} s.\n\n"
        + results_md.table(header, rows)
        + "\n"
        + LEGEND.replace("IDLE", f"{idle:.0f}")
        + "\n"
    ]
    markdown += [f"{text}\n\n{results_md.table(head, body)}" for text, head, body in extra if body]
    return markdown


if __name__ == "__main__":
    raise SystemExit(main())
