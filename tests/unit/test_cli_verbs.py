"""What the verbs make of what the library tells them (the library faked where it would start VMs)."""

from __future__ import annotations

import builtins
import io
from pathlib import Path
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
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], code: int
) -> None:
    monkeypatch.setattr(stop_lib, "stop", lambda *a, **kw: events.Event(events.EXITING, "stopped", 0.0, fields))
    assert stop_cli.run(SimpleNamespace(names=["vm"], tty=False, force=False, save=None)) == code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ("NOT saved" in last) == ("saveFailed" in fields), last  # the last line says so, not only an earlier one


def test_edit_flags_edit_the_yaml() -> None:
    from types import SimpleNamespace

    from torpor.config import edits
    from torpor.config.layering import parse_yaml

    args = SimpleNamespace(
        cpus=4,
        memory=1.5,
        disk=None,
        mount=["/src:w", "/data"],
        mount_type="9p",
        mount_none=True,
        param=["Ver=3"],
        set_expr=['.env.FOO = "bar" | .portForwards += [{guestPort: 80, hostPort: 8080}]', ".ssh.localPort = 2222"],
    )
    text = edits.apply("# my template\nimages: [{location: build:default}]\nmounts: [{location: /old}]\n", args, "t")
    data = parse_yaml(text, "t")
    assert data["cpus"] == 4 and data["memory"] == "1.5GiB" and data["mountType"] == "9p"
    assert data["mounts"] == [{"location": "/src", "writable": True}, {"location": "/data", "writable": False}]
    assert data["param"] == {"Ver": "3"} and data["env"] == {"FOO": "bar"} and data["ssh"] == {"localPort": 2222}
    assert data["portForwards"] == [{"guestPort": 80, "hostPort": 8080}]
    assert edits.apply("cpus: 1\n", SimpleNamespace(), "t") == "cpus: 1\n"  # no flags: the text as it was


@pytest.mark.parametrize("expr", [".cpus", "cpus = 4", ".a | .b", ".mounts[3].x = 1", '.cpus += "x"'])
def test_set_expressions_torpor_does_not_read_are_refused(expr: str) -> None:
    from torpor.config import edits
    from torpor.errors import ConfigError

    with pytest.raises(ConfigError, match="--set"):
        edits.set_expression({"cpus": 1, "mounts": []}, expr)


def test_list_counts_set_aside_states_and_prune_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torpor.cli.main import main
    from torpor.instance.listing import describe

    home, cache = tmp_path / "home", tmp_path / "cache"
    monkeypatch.setenv("TORPOR_HOME", str(home))
    monkeypatch.setenv("TORPOR_CACHE", str(cache))
    inst = home / "vm"
    (inst / "saved.failed-20261207-1").mkdir(parents=True)
    (inst / "torpor.yaml").write_text("images: [{location: build:default}]\n")
    (inst / "saved.failed-20261207-1" / "state.bin").write_bytes(b"x" * 1_000_000)
    (cache / "guests").mkdir(parents=True)
    (cache / "guests" / "img").write_bytes(b"y" * 10_000)
    row = describe("vm", home)
    assert row["setAside"]["count"] == 1 and row["setAside"]["bytes"] >= 1_000_000
    assert main(["list"]) == 0
    assert "1 saved state(s) set aside" in capsys.readouterr().err
    assert main(["prune", "--keep-cache"]) == 0
    assert not (inst / "saved.failed-20261207-1").exists() and (cache / "guests" / "img").exists()
    assert main(["prune"]) == 0
    assert not cache.exists() and (inst / "torpor.yaml").exists()
    assert main(["list", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "vm"


def test_protect_refuses_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torpor.cli.main import main

    monkeypatch.setenv("TORPOR_HOME", str(tmp_path))
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "torpor.yaml").write_text("images: [{location: build:default}]\n")
    assert main(["protect", "vm"]) == 0
    assert main(["delete", "vm"]) != 0 and (tmp_path / "vm").exists()
    assert main(["unprotect", "vm"]) == 0
    assert main(["delete", "vm"]) == 0 and not (tmp_path / "vm").exists()


def test_start_knows_every_edit_flag() -> None:
    from torpor.cli import start as start_cli
    from torpor.config import edits

    assert start_cli.EDIT_FIELDS == edits.FIELDS  # (start's copy keeps a plain start from importing edits)
    assert start_cli.duration("1h30m") == 5400 and start_cli.duration("90") == 90


def test_shell_forwards_the_agent_and_x11_as_the_boot_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from torpor.instance import access

    (tmp_path / "boot.json").write_text(json.dumps({"config": {"ssh": {"forwardAgent": True, "forwardX11": True}}}))
    monkeypatch.setattr(access, "_running_dir", lambda name: tmp_path)
    argv = access.ssh_command("vm", tty=True, script="")
    assert argv[:6] == ["ssh", "-F", str(tmp_path / "ssh.config"), "-t", "-A", "-X"]
    (tmp_path / "boot.json").write_text(json.dumps({"config": {"ssh": {}}}))
    assert "-A" not in access.ssh_command("vm", tty=True, script="")
