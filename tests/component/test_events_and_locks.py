"""Event stream following and pid-file liveness, with real files and real processes."""

import io
import subprocess
import sys
import time
from pathlib import Path

from torpor.hostagent import events
from torpor.instance import spawn
from torpor.store import filenames, lock
from torpor.store.instance import Status, inspect


def test_reader_returns_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "ev.log"
    path.write_text('{"type": "booting", "message": "b", "time": 1}\n{"type": "rea')
    reader = events.EventReader(path)
    assert [e.type for e in reader.read()] == ["booting"]
    with path.open("a") as f:
        f.write('dy", "message": "r", "time": 2, "seconds": 1.5}\n')
    evs = reader.read()
    assert [e.type for e in evs] == ["ready"] and evs[0].fields["seconds"] == 1.5


def test_writer_output_reads_back(tmp_path: Path) -> None:
    buf = io.StringIO()
    events.EventWriter(buf).emit(events.NOTICE, "hello", x=1)
    ev = events.Event.from_json(buf.getvalue().strip())
    assert (ev.type, ev.message, ev.fields) == (events.NOTICE, "hello", {"x": 1})


def test_follow_stops_at_exit_event_and_when_agent_dies(tmp_path: Path) -> None:
    path = tmp_path / "ev.log"
    path.write_text('{"type": "exiting", "message": "bye", "time": 1}\n')
    got = spawn.follow(events.EventReader(path), lambda: True, lambda e: False, lambda e: None, 5)
    assert got is not None and got.message == "bye"
    path.write_text("")
    start = time.monotonic()
    assert spawn.follow(events.EventReader(path), lambda: False, lambda e: False, lambda e: None, 5) is None
    assert time.monotonic() - start < 1


def test_live_lock_holder_makes_pid_file_live(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / filenames.INSTANCE_YAML).write_text("images: [{location: build:default}]\n")
    pidfile = d / filenames.HA_PID
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(pidfile)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert lock.is_locked(pidfile)
        inst = inspect("x", tmp_path)
        # Holding the lock but serving no socket: alive yet not answering.
        assert inst.status is Status.BROKEN and inst.agent_pid == proc.pid and "not answering" in inst.reason
    finally:
        proc.kill()
        proc.wait()
    inst = inspect("x", tmp_path)
    assert inst.status is Status.BROKEN and "stale" in inst.reason
