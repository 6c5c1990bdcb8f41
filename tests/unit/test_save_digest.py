"""The save's state digest, taken from the moment QEMU reports the state written (hostagent/saving.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from torpor.hostagent import saving
from torpor.store import savedstate


async def _digest(tmp: Path, write_after_start: bytes | None, first_read: threading.Event) -> str:
    digest = saving._StateDigest(tmp)
    digest.start()
    if write_after_start is not None:
        await asyncio.to_thread(first_read.wait)  # the first digest is done: it must be redone
        with tmp.open("r+b") as f:
            f.write(write_after_start)
        st = tmp.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock would not have moved
    digest.settle()
    return await digest.result()


@pytest.fixture
def first_read(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the digest has read the file a first time."""
    done = threading.Event()
    digest_of = saving._digest_of

    def noting(fd: int) -> tuple[str, os.stat_result]:
        try:
            return digest_of(fd)
        finally:
            done.set()

    monkeypatch.setattr(saving, "_digest_of", noting)
    return done


def test_digest_of_the_state_as_written(tmp_path: Path, first_read: threading.Event) -> None:
    tmp = tmp_path / "state.bin.tmp"
    tmp.write_bytes(os.urandom(3 * savedstate.BLOCK + 5))
    assert asyncio.run(_digest(tmp, None, first_read)) == savedstate.state_digest(tmp)


def test_state_written_after_it_was_reported_written_is_hashed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first_read: threading.Event
) -> None:
    tmp = tmp_path / "state.bin.tmp"
    tmp.write_bytes(os.urandom(2 * savedstate.BLOCK))
    first = savedstate.state_digest(tmp)
    with caplog.at_level(logging.WARNING):
        got = asyncio.run(_digest(tmp, b"late device state", first_read))
    assert got == savedstate.state_digest(tmp) != first
    assert "computing its digest again" in caplog.text
