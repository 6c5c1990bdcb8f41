import json
import os
import time
from pathlib import Path

import pytest

from tests.unit import records_example
from torpor.config import machine
from torpor.errors import InstanceStateError
from torpor.store import filenames, savedstate, snapshots


def test_tags_are_checked() -> None:
    assert snapshots.validate_tag("clean-1.0_a") == "clean-1.0_a"
    for bad in ("", "-x", "a/b", "a b", "x" * 65, "..", ".hidden"):
        with pytest.raises(InstanceStateError, match="invalid snapshot tag"):
            snapshots.validate_tag(bad)


def test_record_written_last_with_digest_and_read_back(tmp_path: Path) -> None:
    d = snapshots.snapshot_dir(tmp_path, "t1")
    d.mkdir(parents=True)
    snapshots.write_meta(d, {**records_example.machine_state(createdAt=5.0), "tag": "t1", "memory": True})
    snap = snapshots.read(tmp_path, "t1")
    assert snap.has_memory and snap.created == 5.0
    assert snapshots.list_all(tmp_path) == ([snap], [])
    path = d / filenames.SNAPSHOT_META
    path.write_text(path.read_text().replace('"cpus": 2', '"cpus": 3'))
    with pytest.raises(InstanceStateError, match="damaged"):
        snapshots.read(tmp_path, "t1")
    assert snapshots.list_all(tmp_path) == ([], ["t1"])


def test_missing_and_interrupted_snapshots_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InstanceStateError, match="has no snapshot 'nope'") as e:
        snapshots.read(tmp_path, "nope")
    assert "snapshot list" in (e.value.hint or "")
    snapshots.snapshot_dir(tmp_path, "half").mkdir(parents=True)
    with pytest.raises(InstanceStateError, match="incomplete"):
        snapshots.read(tmp_path, "half")


def test_machine_changes_name_the_fields() -> None:
    then = {"arch": "x86_64", "cpus": 2, "memory": 1, "saveMode": "copy", "disk": 5}
    now = {"arch": "x86_64", "cpus": 4, "memory": 1, "saveMode": "copy", "disk": 99}
    assert machine.changes(then, now) == ["cpus 2 -> 4"]  # the disk is not part of the machine


def test_state_unchanged_follows_the_change_time(tmp_path: Path) -> None:
    d = savedstate.saved_dir(tmp_path)
    d.mkdir()
    state = d / filenames.STATE_FILE
    state.write_bytes(b"S" * 100)
    saved = savedstate.Saved(d, {"state": {"identity": savedstate.written_identity(state)}})  # type: ignore[typeddict-item]
    assert savedstate.state_unchanged(saved)
    time.sleep(0.05)  # past the kernel's coarse clock tick, which timestamps change times
    os.link(state, tmp_path / "other-name")  # a new link moves the change time, like any write
    assert not savedstate.state_unchanged(saved)
    assert not savedstate.state_unchanged(savedstate.Saved(d, json.loads('{"state": {}}')))


def test_held_ssh_ports_are_those_restores_will_bind(tmp_path: Path) -> None:
    def saved(name: str, port: int) -> Path:
        inst = tmp_path / name
        savedstate.saved_dir(inst).mkdir(parents=True)
        savedstate.write_manifest(inst, records_example.manifest(boot=records_example.boot_record(sshPort=port)))
        return inst / "saved" / "manifest.json"

    def snapshot(name: str, tag: str, meta: dict[str, object]) -> None:
        d = snapshots.snapshot_dir(tmp_path / name, tag)
        d.mkdir(parents=True)
        snapshots.write_meta(d, meta)

    saved("a", 40001)
    warm = records_example.machine_state(boot=records_example.boot_record(sshPort=40002))
    snapshot("b", "warm", {**warm, "tag": "warm", "memory": True})
    snapshot("b", "disk", {"tag": "disk", "createdAt": 1.0, "memory": False})  # no restore to make
    damaged = saved("c", 40009)  # nothing restores from a damaged manifest: its state is set aside
    damaged.write_text(damaged.read_text().replace("40009", "40008"))
    (tmp_path / "d" / "saved").mkdir(parents=True)  # an empty saved/ (a mount point): nothing to restore
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "boot.json").write_text(json.dumps({"sshPort": 40003}))  # running or stopped: not held
    for inst in tmp_path.iterdir():  # each an instance (its file), as list_names requires
        (inst / "torpor.yaml").touch()
    assert snapshots.held_ssh_ports(tmp_path) == {40001, 40002}
