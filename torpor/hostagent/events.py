"""The host agent's event stream: one JSON object per line on its stdout (``ha.stdout.log``).

``torpor start`` and ``torpor stop`` follow this file to show progress and learn the outcome; the agent's log
(stderr) is separate and meant for people.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

TYPE_CHECKING = False  # not typing's: importing typing is a tenth of `torpor stop`'s imports, this module's among them
if TYPE_CHECKING:
    from typing import Any, TextIO

# Event types
STARTING = "starting"
NOTICE = "notice"
BOOTING = "booting"
READY = "ready"
STOPPING = "stopping"
PROGRESS = "progress"  # bytes done of a save or restore: {"done": N, "total": N}
ERROR = "error"
EXITING = "exiting"  # always the last event of a host agent run


class Event:
    """One event.  (A plain class: dataclasses and NamedTuple cost imports `torpor stop` would wait for.)"""

    __slots__ = ("fields", "message", "time", "type")

    def __init__(self, type: str, message: str, time: float, fields: dict[str, Any]) -> None:
        self.type = type
        self.message = message
        self.time = time
        self.fields = fields

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {self.message!r}, {self.time!r}, {self.fields!r})"

    def to_json(self) -> str:
        return json.dumps({"time": self.time, "type": self.type, "message": self.message, **self.fields})

    @classmethod
    def from_json(cls, line: str) -> Event:
        data = json.loads(line)
        return cls(
            type=str(data.pop("type")),
            message=str(data.pop("message", "")),
            time=float(data.pop("time", 0)),
            fields=data,
        )


class EventWriter:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def emit(self, type_: str, message: str, **fields: Any) -> None:
        self._stream.write(Event(type_, message, time.time(), fields).to_json() + "\n")
        self._stream.flush()


class ProgressEmitter:
    """Turns (done, total) callbacks into PROGRESS events, at most ten a second."""

    def __init__(self, writer: EventWriter, what: str) -> None:
        self.writer = writer
        self.what = what
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        self.writer.emit(
            PROGRESS,
            f"{self.what}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB ({rate / 2**20:.0f} MiB/s)",
            done=done,
            total=total,
        )


class EventReader:
    """Reads complete event lines appended to a file since the last read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""

    @classmethod
    def at_end(cls, path: Path) -> EventReader:
        try:
            return cls(path, path.stat().st_size)
        except FileNotFoundError:
            return cls(path, 0)

    def read(self) -> list[Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                events.append(Event.from_json(line.decode(errors="replace")))
            except (ValueError, KeyError):
                continue  # not an event (a stray print); the stream is best effort for humans
        return events
