import os
from pathlib import Path

import pytest

from torpor.errors import InstanceNotFound, TorporError
from torpor.store import atomic, filenames
from torpor.store.instance import Status, clear_runtime_files, inspect, list_names, validate_name


def make_instance(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / filenames.INSTANCE_YAML).write_text("images: [{location: build:default}]\n")
    return d


@pytest.mark.parametrize("name", ["default", "dev-1", "a", "x9"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "x-", "Upper", "has space", "../etc", "_config", "a" * 42])
def test_invalid_names(name: str) -> None:
    with pytest.raises(TorporError, match="invalid instance name"):
        validate_name(name)


def test_list_skips_config_and_hidden_dirs(tmp_path: Path) -> None:
    make_instance(tmp_path, "b")
    make_instance(tmp_path, "a")
    (tmp_path / "_config").mkdir()
    (tmp_path / ".a.creating.1").mkdir()
    assert list_names(tmp_path) == ["a", "b"]


def test_missing_instance(tmp_path: Path) -> None:
    with pytest.raises(InstanceNotFound):
        inspect("nope", tmp_path)


def test_stopped_when_no_runtime_files(tmp_path: Path) -> None:
    make_instance(tmp_path, "x")
    assert inspect("x", tmp_path).status is Status.STOPPED


def test_stale_pid_file_is_broken_with_a_reason(tmp_path: Path) -> None:
    d = make_instance(tmp_path, "x")
    (d / filenames.HA_PID).write_text("999999\n")  # nobody holds its lock
    inst = inspect("x", tmp_path)
    assert inst.status is Status.BROKEN
    assert "stale" in inst.reason and "torpor start x" in inst.reason
    assert inst.agent_pid is None


def test_reused_qemu_pid_is_not_taken_for_qemu(tmp_path: Path) -> None:
    d = make_instance(tmp_path, "x")
    (d / filenames.QEMU_PID).write_text(f"{os.getpid()}\n")  # alive, but it is pytest, not QEMU
    assert inspect("x", tmp_path).qemu_pid is None


def test_clear_runtime_files_keeps_disk_and_yaml(tmp_path: Path) -> None:
    d = make_instance(tmp_path, "x")
    for n in (filenames.HA_PID, filenames.HA_SOCK, filenames.QMP_SOCK, filenames.DISK):
        (d / n).write_text("")
    removed = clear_runtime_files(d)
    assert set(removed) == {filenames.HA_PID, filenames.HA_SOCK, filenames.QMP_SOCK}
    assert (d / filenames.DISK).exists() and (d / filenames.INSTANCE_YAML).exists()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    atomic.write_text(p, "one")
    atomic.write_text(p, "two", mode=0o600)
    assert p.read_text() == "two"
    assert (p.stat().st_mode & 0o777) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f"]
