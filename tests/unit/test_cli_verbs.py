"""What `torpor start` and `torpor stop` make of what the library tells them (the library itself faked)."""

from __future__ import annotations

import builtins
import io
from types import SimpleNamespace
from typing import Any

import pytest

from torpor.cli import start as start_cli
from torpor.cli import stop as stop_cli
from torpor.hostagent import events
from torpor.instance import start as start_lib
from torpor.instance import stop as stop_lib


@pytest.mark.parametrize("stdin_tty", [True, False])
def test_start_asks_only_someone_at_a_terminal(monkeypatch: pytest.MonkeyPatch, stdin_tty: bool) -> None:
    seen: dict[str, Any] = {}

    def fake_start(name: str, report: object, tty: bool, **kw: Any) -> events.Event:
        seen.update(kw)
        return events.Event(events.READY, "ready", 0.0, {})

    monkeypatch.setattr(start_lib, "start", fake_start)
    stdin = io.StringIO("")
    monkeypatch.setattr(stdin, "isatty", lambda: stdin_tty)
    monkeypatch.setattr("sys.stdin", stdin)
    assert start_cli.run(SimpleNamespace(name="vm", tty=True, cold=False)) == 0
    # stdout on a terminal but stdin a pipe: a prompt would take the next line of the pipe as its answer.
    assert (seen["ask"] is not None) is stdin_tty


def test_ctrl_d_at_the_prompt_is_the_default_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    assert start_cli._ask("restore? [R/d] ") == ""


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
