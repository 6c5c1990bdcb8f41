import os
import threading
import time
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


def test_list_skips_config_hidden_and_other_dirs(tmp_path: Path) -> None:
    make_instance(tmp_path, "b")
    make_instance(tmp_path, "a")
    (tmp_path / "_config").mkdir()
    (tmp_path / ".a.creating.1").mkdir()
    (tmp_path / "projects").mkdir()  # a user's own directory, a mount's location say: not an instance
    (tmp_path / "notes.yaml").write_text("")
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


def _dirty_pages(path: Path) -> int:
    """The file's dirty pages in the page cache (Linux cachestat(2), 6.5+)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    span = (ctypes.c_uint64 * 2)(0, 0)  # offset, length (0: to the end)
    stat = (ctypes.c_uint64 * 5)()  # cache, dirty, writeback, evicted, recently evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(451, fd, span, stat, 0) != 0:  # SYS_cachestat on x86-64
            pytest.skip(f"no cachestat here: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    return int(stat[1])


def test_writeback_writes_out_while_the_file_is_written(tmp_path: Path) -> None:
    plain, pushed, old = tmp_path / "plain", tmp_path / "pushed", tmp_path / "old"
    old.write_bytes(b"kept")
    block = os.urandom(1 << 20)
    with atomic.Writeback([pushed, old], period=0.005):
        assert (pushed.stat().st_mode & 0o777) == 0o600  # created at once, for the writer to open
        for path in (plain, pushed):
            with path.open("r+b" if path.exists() else "wb") as f:
                for _ in range(32):
                    f.write(block)
        deadline = time.monotonic() + 5
        while _dirty_pages(pushed) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _dirty_pages(pushed) == 0
    assert _dirty_pages(plain) > 0  # the kernel alone would have left it in the cache for half a minute
    assert pushed.read_bytes() == block * 32 and old.read_bytes() == b"kept"
    # Its thread ends and closes its descriptors after the block, without being waited for.
    deadline = time.monotonic() + 5
    while any(t.name == "writeback" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert not open_files & {str(pushed), str(old)}


def test_writeback_of_no_files_runs_no_thread() -> None:
    with atomic.Writeback([]):
        assert not any(t.name == "writeback" for t in threading.enumerate())
