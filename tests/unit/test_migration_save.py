"""migration.save's ``written`` callback: on QEMU's MIGRATION "completed" event, before query-migrate says so.

A fake QMP session stands in for QEMU here (the order of its replies is the logic under test; the real QEMU's
part is in tests/integration/test_mechanisms.py): like QEMU 10 closing a file: migration, it sends the event
and keeps answering query-migrate "active" while it syncs the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

from torpor.driver.qemu import mechanisms, migration
from torpor.driver.qemu.qmp import QMPSession


class ClosingQEMU:
    def __init__(self, send_event: bool) -> None:
        self.send_event = send_event
        self.migrating = asyncio.Event()
        self.seen: list[str] = []  # query-migrate's answers so far
        self.event_taken = False

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        if command == "migrate":
            self.migrating.set()
        if command != "query-migrate":
            return {}
        # "completed" once the event was taken, or after a while (no event, or no one listening for it)
        done = self.event_taken or len(self.seen) >= 20
        self.seen.append("completed" if done else "active")
        return {"status": self.seen[-1]}

    async def events(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        assert names == ("MIGRATION",)
        await self.migrating.wait()
        if self.send_event:
            await asyncio.sleep(0.02)  # a few query-migrate rounds first
            self.event_taken = True
            yield {"event": "MIGRATION", "data": {"status": "completed"}}
        await asyncio.Event().wait()


def _save(qemu: ClosingQEMU, tmp: Path) -> list[list[str]]:
    calls: list[list[str]] = []  # query-migrate's answers seen when ``written`` was called

    async def run() -> None:
        session = cast(QMPSession, qemu)
        known = {"mapped-ram", "multifd", "events"}
        await migration.save(
            session,
            mechanisms.MAPPED_RAM,
            tmp,
            known,
            relay_socket=tmp.with_name("mig.sock"),
            written=lambda: calls.append(list(qemu.seen)),
        )

    asyncio.run(run())
    return calls


def test_written_comes_with_the_event_before_query_migrate_completes(tmp_path: Path) -> None:
    qemu = ClosingQEMU(send_event=True)
    calls = _save(qemu, tmp_path / "state.bin.tmp")
    assert len(calls) == 1
    assert calls[0] and "completed" not in calls[0]  # called while QEMU still answered "active"
    assert qemu.seen[-1] == "completed"


def test_written_is_called_once_without_an_event(tmp_path: Path) -> None:
    qemu = ClosingQEMU(send_event=False)
    calls = _save(qemu, tmp_path / "state.bin.tmp")
    assert calls == [qemu.seen]  # once, after query-migrate said completed
    assert qemu.seen[-1] == "completed"


class FinalizingQEMU(ClosingQEMU):
    """Completes at once, then reports the run state finish-migrate a few times before postmigrate."""

    def __init__(self) -> None:
        super().__init__(send_event=False)
        self.statuses = ["finish-migrate"] * 3 + ["postmigrate"]
        self.status_asked = 0

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        if command == "query-status":
            self.status_asked += 1
            return {"status": self.statuses[min(self.status_asked, len(self.statuses)) - 1]}
        if command == "query-migrate":
            return {"status": "completed"}
        return {}


def test_save_returns_once_the_migration_is_finalized(tmp_path: Path) -> None:
    qemu = FinalizingQEMU()
    _save(qemu, tmp_path / "state.bin.tmp")
    assert qemu.status_asked == 4  # until QEMU left finish-migrate: a `cont` now succeeds
