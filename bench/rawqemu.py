"""The raw QEMU baseline: the same QEMU and the same saved state, driven by hand over QMP, without torpor.

Given a state torpor saved (its manifest has QEMU's exact argv and the mechanism), :func:`measure` starts that
QEMU with ``-incoming defer`` on a copy of the instance's disk (torpor restores the same state afterwards, and
that disk must not change), loads the state, and saves it again with the same mechanism, set up as torpor sets
it up (mechanisms.setup_commands), into a scratch file, followed by fsync.  What it times is the floor torpor's
own orchestration adds to:

- restore: QEMU spawned until the state is loaded (the VM would run at the next ``cont``);
- save: ``stop`` until QEMU reports the migration completed, plus fsync of the file; and once more with the
  file written out while QEMU writes it, as torpor's save does;
- snapshot-save / snapshot-load: QMP jobs writing RAM and devices into the qcow2 image (here the disk's copy)
  and loading them back: the alternative torpor's snapshots were measured against.

It also counts the guest's touched memory in that state, independently of any save mechanism: the 4 KiB pages
of guest RAM that hold anything but zeros, read through ``pmemsave`` (a page written and zeroed again counts as
untouched: no state needs to hold it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from torpor.driver.qemu import mechanisms, relay
from torpor.store import atomic


async def _connect(path: Path, proc: subprocess.Popen[bytes]) -> QMPClient:
    qmp = QMPClient("bench")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            await qmp.connect(str(path))
            return qmp
        except Exception:
            await asyncio.sleep(0.002)


async def _prepare(qmp: QMPClient, mechanism: str) -> None:
    """The mechanism's capabilities and parameters, as torpor sets them: the baseline is QEMU with the same
    settings, without torpor around it."""
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 62})
    caps = await qmp.execute("query-migrate-capabilities")
    assert isinstance(caps, list)
    for command, args in mechanisms.setup_commands(mechanism, {c["capability"] for c in caps}):
        await qmp.execute(command, args)


async def _wait(qmp: QMPClient, command: str, done: set[str]) -> dict[str, Any]:
    while True:
        info = await qmp.execute(command)
        assert isinstance(info, dict)
        if info.get("status") in done:
            return info
        if info.get("status") == "failed":
            raise RuntimeError(f"migration failed: {info}")
        await asyncio.sleep(0.002)


async def _job(qmp: QMPClient, command: str, args: dict[str, Any]) -> float:
    t0 = time.monotonic()
    await qmp.execute(command, args)
    while True:
        jobs = await qmp.execute("query-jobs")
        assert isinstance(jobs, list)
        job = next(j for j in jobs if j["id"] == args["job-id"])
        if job["status"] == "concluded":
            await qmp.execute("job-dismiss", {"id": args["job-id"]})
            if job.get("error"):
                raise RuntimeError(f"{command}: {job['error']}")
            return time.monotonic() - t0
        await asyncio.sleep(0.002)


async def _internal_snapshot(qmp: QMPClient, mechanism: str) -> dict[str, float]:
    """The alternative torpor's snapshots were measured against: QMP snapshot-save / snapshot-load jobs, RAM and
    devices written as a stream into the qcow2 image (here the copy of the instance's disk)."""
    block = await qmp.execute("query-block")
    assert isinstance(block, list)
    node = next(b["inserted"]["node-name"] for b in block if b["device"] == "disk0")
    args = {"tag": "bench", "vmstate": node, "devices": [node]}
    # QEMU 10 keeps the images of a VM loaded from a migration inactive until it runs: let it run a moment.
    await qmp.execute("cont")
    await qmp.execute("stop")
    await _prepare(qmp, mechanisms.STREAM)  # a snapshot is a plain stream
    save = await _job(qmp, "snapshot-save", {"job-id": "s", **args})
    load = await _job(qmp, "snapshot-load", {"job-id": "l", **args})
    return {"raw_snapsave": save, "raw_snapload": load}


PAGE = 4096


async def _touched_mib(qmp: QMPClient, memory: int, scratch_dir: Path) -> float:
    """MiB of guest RAM in non-zero 4 KiB pages, read with pmemsave through a FIFO (nothing written to disk).

    Guest RAM lies where q35 puts it (pc_q35_init): all below 4 GiB up to 2.75 GiB of RAM, else 2 GiB below
    4 GiB and the rest from 4 GiB up.
    """
    low = memory if memory < 0xB0000000 else 0x80000000
    ranges = [(0, low)] + ([(1 << 32, memory - low)] if memory > low else [])
    fifo = scratch_dir / "bench-ram.fifo"
    pages = 0
    for base, size in ranges:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        try:
            counted = asyncio.ensure_future(asyncio.to_thread(_count_nonzero_pages, fifo))
            await qmp.execute("pmemsave", {"val": base, "size": size, "filename": str(fifo)})
            pages += await counted
        finally:
            fifo.unlink(missing_ok=True)
    return pages * PAGE / 2**20


def _count_nonzero_pages(path: Path) -> int:
    zero = bytes(PAGE)
    count = 0
    with path.open("rb") as f:  # a buffered read(n) returns n bytes until the end: pages stay aligned
        while chunk := f.read(1 << 20):
            count += sum(chunk[i : i + PAGE] != zero for i in range(0, len(chunk), PAGE))
    return count


async def _load(qmp: QMPClient, mechanism: str, state: Path) -> None:
    await _prepare(qmp, mechanism)
    fd = -1
    if mechanism == "mapped-ram":
        await qmp.execute("migrate-incoming", {"uri": f"file:{state}"})
    elif mechanism == "multifd":  # the channels sent by torpor's relay, as torpor restores them
        sock = state.with_name("bench-mig.sock")
        await qmp.execute("migrate-incoming", {"uri": f"unix:{sock}"})
        await asyncio.to_thread(relay.Feed, sock, state)
    else:
        fd = os.open(state, os.O_RDONLY)
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "in"})
        await qmp.execute("migrate-incoming", {"uri": "fd:in"})
    while (await qmp.execute("query-status"))["status"] == "inmigrate":  # type: ignore[index]
        await asyncio.sleep(0.002)
    if fd >= 0:
        os.close(fd)


async def _save(qmp: QMPClient, mechanism: str, scratch: Path, writeback: bool = False) -> None:
    """``writeback``: the file written out while QEMU writes it, as torpor's save does (atomic.Writeback)."""
    with atomic.Writeback([scratch] if writeback else []):
        await _save_and_wait(qmp, mechanism, scratch)
    sync = os.open(scratch, os.O_RDONLY)
    os.fsync(sync)
    os.close(sync)


async def _save_and_wait(qmp: QMPClient, mechanism: str, scratch: Path) -> None:
    await qmp.execute("stop")
    await _prepare(qmp, mechanism)
    if mechanism == "mapped-ram":
        await qmp.execute("migrate", {"uri": f"file:{scratch}"})
    elif mechanism == "multifd":  # the channels written by torpor's relay, as torpor saves them
        ram = int((await qmp.execute("query-memory-size-summary"))["base-memory"])  # type: ignore[index]
        sock = scratch.with_name("bench-mig.sock")
        recorder = relay.Recorder(sock, scratch, mechanisms.multifd_channels(), ram)
        await qmp.execute("migrate", {"uri": f"unix:{sock}"})
        await _wait(qmp, "query-migrate", {"completed"})
        await asyncio.to_thread(recorder.finish)
        return
    else:
        out = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        qmp.send_fd_scm(out)
        os.close(out)
        await qmp.execute("getfd", {"fdname": "out"})
        await qmp.execute("migrate", {"uri": "fd:out"})
    await _wait(qmp, "query-migrate", {"completed"})


@contextlib.asynccontextmanager
async def _qemu(argv: list[str], qmp_path: Path) -> AsyncIterator[tuple[QMPClient, float]]:
    """QEMU started from ``argv`` (with -incoming defer) and its QMP session, with the time it was spawned."""
    qmp_path.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        qmp = await _connect(qmp_path, proc)
        yield qmp, started
        with contextlib.suppress(Exception):  # QEMU may close the socket before it answers
            await qmp.execute("quit")
            await qmp.disconnect()
    except Exception as e:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"raw QEMU run failed: {e!r}; QEMU said: {err[-2000:]}") from e
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for p in (qmp_path, Path(argv[argv.index("-pidfile") + 1])):
            p.unlink(missing_ok=True)


async def _run(manifest: dict[str, Any], state: Path, scratch: Path, ram: Path | None) -> dict[str, float]:
    mechanism = manifest["mechanism"]
    # A copy of the disk beside it (a relative backing file still resolves): the instance's disk stays untouched.
    disk = Path(next(a for a in manifest["argv"] if a.startswith("file=") and "id=disk0" in a).split(",")[0][5:])
    scratch_disk = disk.with_name("bench-disk.qcow2")
    subprocess.run(["cp", "--sparse=always", str(disk), str(scratch_disk)], check=True)
    argv = [a.replace(f"file={disk},", f"file={scratch_disk},") for a in manifest["argv"]]
    if ram is not None:  # instant mode: a copy of the guest's RAM file, the other half of the state
        argv = [re.sub(r"mem-path=[^,]*", f"mem-path={ram}", a) for a in argv]
    argv += ["-incoming", "defer"]
    qmp_path = Path(argv[argv.index("-qmp") + 1].removeprefix("unix:").split(",")[0])
    snap: dict[str, float] = {}
    try:
        async with _qemu(argv, qmp_path) as (qmp, started):
            await _load(qmp, mechanism, state)
            restore = time.monotonic() - started
            t1 = time.monotonic()
            await _save(qmp, mechanism, scratch)
            save = time.monotonic() - t1
            touched = await _touched_mib(qmp, int(manifest["config"]["memory"]), scratch.parent)
            scratch.unlink()
            await qmp.execute("cont")  # QEMU saves a VM paused by a save only once it has run again
            t1 = time.monotonic()
            await _save(qmp, mechanism, scratch, writeback=True)
            save_wb = time.monotonic() - t1
        # The snapshot jobs in a QEMU of their own, also straight after a load: after them (they rewrite guest
        # RAM) the same save took 1.1 s instead of 0.4 s.  Loading a snapshot writes guest RAM: in a shared RAM
        # file (instant mode) that would spoil the saved pair, so not there.
        if mechanism != "shared-ram":
            async with _qemu(argv, qmp_path) as (qmp, _):
                await _load(qmp, mechanism, state)
                snap = await _internal_snapshot(qmp, mechanism)
    finally:
        scratch.unlink(missing_ok=True)
        scratch_disk.unlink(missing_ok=True)
    return {"raw_restore": restore, "raw_save": save, "raw_save_wb": save_wb, "touched": touched, **snap}


def measure(manifest: dict[str, Any], state: Path, scratch: Path, ram: Path | None = None) -> dict[str, float]:
    """Measure on ``state`` (and, in instant mode, ``ram`` instead of the instance's RAM file)."""
    return asyncio.run(_run(manifest, state, scratch, ram))
