"""What `torpor start` and `torpor stop` make of what the library tells them (the library itself faked)."""

from __future__ import annotations

import builtins
import io
from types import SimpleNamespace
from typing import Any

import pytest

from torpor.cli import common
from torpor.cli import stop as stop_cli
from torpor.cli.main import main
from torpor.hostagent import events
from torpor.instance import start as start_lib
from torpor.instance import stop as stop_lib


@pytest.mark.parametrize(
    ("argv", "stdout_tty", "stdin_tty", "asks"),
    [
        (["start", "vm"], True, True, True),
        # stdout on a terminal but stdin a pipe: a prompt would take the pipe's next line as its answer.
        (["start", "vm"], True, False, False),
        (["start", "vm"], False, True, False),
        (["--tty", "start", "vm"], False, False, True),  # as on a terminal: the answer is read from stdin
        (["--no-tty", "start", "vm"], True, True, False),
    ],
)
def test_start_asks_only_someone_who_can_answer(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stdout_tty: bool, stdin_tty: bool, asks: bool
) -> None:
    seen: dict[str, Any] = {}

    def fake_start(name: str, report: object, tty: bool, **kw: Any) -> events.Event:
        seen.update(kw)
        return events.Event(events.READY, "ready", 0.0, {})

    monkeypatch.setattr(start_lib, "start", fake_start)
    for stream, tty in (("stdin", stdin_tty), ("stdout", stdout_tty)):
        fake = io.StringIO("")
        monkeypatch.setattr(fake, "isatty", lambda tty=tty: tty)
        monkeypatch.setattr(f"sys.{stream}", fake)
    assert main(argv) == 0
    assert (seen["ask"] is not None) is asks


def test_ctrl_d_at_the_prompt_is_the_default_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    assert common.ask("restore? [R/d] ") == ""
    assert common.asker(SimpleNamespace(interactive=True)) is common.ask
    assert common.asker(SimpleNamespace(interactive=False)) is None


@pytest.mark.parametrize(("answer", "applied"), [(EOFError, False), ("y\n", True), ("n\n", False)])
def test_snapshot_apply_asks_once_and_takes_ctrl_d_for_no(
    monkeypatch: pytest.MonkeyPatch, answer: object, applied: bool
) -> None:
    from torpor.instance import snapshot as snapshot_lib

    stdin = io.StringIO("" if answer is EOFError else str(answer))
    monkeypatch.setattr("sys.stdin", stdin)
    outcome: dict[str, bool] = {}

    def fake_apply(name: str, tag: str, report: object, *, confirm: Any, start: object) -> bool:
        outcome["confirmed"] = confirm("applying snapshot 't' replaces the disk's contents")
        return False

    monkeypatch.setattr(snapshot_lib, "apply", fake_apply)
    assert main(["--tty", "snapshot", "apply", "vm", "--tag", "t"]) == 0  # --tty: as on a terminal, from stdin
    assert outcome["confirmed"] is applied


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"ok": True, "saved": True}, 0),
        ({"ok": True, "saved": False}, 0),  # shut down, as asked
        ({"ok": True, "saved": False, "saveFailed": "saving the machine state failed: ENOSPC"}, 1),
        ({"ok": False}, 1),  # the host agent failed
    ],
)
def test_stop_fails_when_the_stop_was_not_what_was_asked(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], code: int
) -> None:
    monkeypatch.setattr(stop_lib, "stop", lambda *a, **kw: events.Event(events.EXITING, "stopped", 0.0, fields))
    assert stop_cli.run(SimpleNamespace(name="vm", tty=False, force=False, save=None)) == code
