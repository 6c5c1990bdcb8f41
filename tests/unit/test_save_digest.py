"""The save's state digest, taken from the moment QEMU reports the state written (hostagent/saving.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from torpor.hostagent.saving import _StateDigest
from torpor.store import savedstate


async def _digest(tmp: Path, write_after_start: bytes | None) -> str:
    digest = _StateDigest(tmp)
    digest.start()
    if write_after_start is not None:
        while not digest._task or not digest._task.done():  # the first digest is done: it must be redone
            await asyncio.sleep(0.001)
        with tmp.open("r+b") as f:
            f.write(write_after_start)
        st = tmp.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock would not have moved
    digest.settle()
    return await digest.result()


def test_digest_of_the_state_as_written(tmp_path: Path) -> None:
    tmp = tmp_path / "state.bin.tmp"
    tmp.write_bytes(os.urandom(3 * savedstate.BLOCK + 5))
    assert asyncio.run(_digest(tmp, None)) == savedstate.state_digest(tmp)


def test_state_written_after_it_was_reported_written_is_hashed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp = tmp_path / "state.bin.tmp"
    tmp.write_bytes(os.urandom(2 * savedstate.BLOCK))
    first = savedstate.state_digest(tmp)
    with caplog.at_level(logging.WARNING):
        got = asyncio.run(_digest(tmp, b"late device state"))
    assert got == savedstate.state_digest(tmp) != first
    assert "computing its digest again" in caplog.text
