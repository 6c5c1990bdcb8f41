import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.unit import records_example
from torpor.store import filenames, savedstate


def make_saved(inst: Path, state: bytes = b"S" * 1000) -> dict[str, Any]:
    (inst / filenames.DISK).write_bytes(b"disk")
    (inst / filenames.CIDATA).write_bytes(b"iso")
    d = savedstate.saved_dir(inst)
    d.mkdir()
    (d / filenames.STATE_FILE).write_bytes(state)
    manifest = records_example.manifest(
        disk=savedstate.file_identity(inst / filenames.DISK),
        cidataSha256=savedstate.sha256_file(inst / filenames.CIDATA),
        state={
            "size": len(state),
            "allocated": len(state),
            "digest": savedstate.state_digest(d / filenames.STATE_FILE),
        },
    )
    savedstate.write_manifest(inst, manifest)
    return manifest


def test_no_saved_state(tmp_path: Path) -> None:
    assert savedstate.load(tmp_path) is None
    savedstate.saved_dir(tmp_path).mkdir()  # an empty directory (a mount point) is no state either
    assert savedstate.load(tmp_path) is None and not savedstate.present(tmp_path)
    assert savedstate.set_aside(tmp_path) is None


def test_complete_state_loads_and_passes_checks(tmp_path: Path) -> None:
    make_saved(tmp_path)
    saved = savedstate.load(tmp_path)
    assert saved is not None and saved.size == 1000
    assert savedstate.problems(saved, tmp_path, "7.2.0") == []


def test_state_without_manifest_is_an_interrupted_save(tmp_path: Path) -> None:
    d = savedstate.saved_dir(tmp_path)
    d.mkdir()
    (d / "state.bin.tmp").write_bytes(b"partial")
    with pytest.raises(savedstate.Unusable, match="interrupted"):
        savedstate.load(tmp_path)


def test_flipped_byte_in_manifest_is_detected(tmp_path: Path) -> None:
    make_saved(tmp_path)
    path = savedstate.saved_dir(tmp_path) / filenames.MANIFEST
    text = path.read_text().replace('"cpus": 2', '"cpus": 3')
    assert text != path.read_text()
    path.write_text(text)
    with pytest.raises(savedstate.Unusable, match="damaged"):
        savedstate.load(tmp_path)


def test_truncated_state_and_changed_disk_and_qemu_are_problems(tmp_path: Path) -> None:
    make_saved(tmp_path)
    saved = savedstate.load(tmp_path)
    assert saved is not None
    with (savedstate.saved_dir(tmp_path) / filenames.STATE_FILE).open("r+b") as f:
        f.truncate(500)
    (tmp_path / filenames.DISK).write_bytes(b"disk, written after the save")
    problems = savedstate.problems(saved, tmp_path, "8.0.0")
    assert any("QEMU changed" in p for p in problems)
    assert any("disk changed" in p for p in problems)
    assert any("500 bytes" in p for p in problems)


def test_corrupt_state_contents_fail_the_checksum(tmp_path: Path) -> None:
    make_saved(tmp_path)
    state = savedstate.saved_dir(tmp_path) / filenames.STATE_FILE
    data = bytearray(state.read_bytes())
    data[10] ^= 0xFF
    state.write_bytes(bytes(data))
    saved = savedstate.load(tmp_path)
    assert saved is not None
    assert any("checksum" in p for p in savedstate.problems(saved, tmp_path, "7.2.0"))


def test_set_aside_keeps_the_state_out_of_the_way(tmp_path: Path) -> None:
    make_saved(tmp_path)
    aside = savedstate.set_aside(tmp_path)
    assert aside is not None and aside.name.startswith(filenames.SAVED_ASIDE_PREFIX)
    assert (aside / filenames.STATE_FILE).exists()
    assert savedstate.load(tmp_path) is None


def test_manifest_is_json_with_digest(tmp_path: Path) -> None:
    make_saved(tmp_path)
    data = json.loads((savedstate.saved_dir(tmp_path) / filenames.MANIFEST).read_text())
    assert data["complete"] is True and data["manifestDigest"].startswith("sha256:")


@pytest.mark.parametrize("key", ["argv", "disk", "boot.sshPort", "boot.configSources"])
def test_a_manifest_lacking_a_key_is_unusable_with_its_name(tmp_path: Path, key: str) -> None:
    manifest = make_saved(tmp_path)
    outer, _, inner = key.partition(".")
    if inner:
        del manifest[outer][inner]
    else:
        del manifest[outer]
    savedstate.write_manifest(tmp_path, manifest)
    with pytest.raises(savedstate.Unusable, match=f"lacks {key}"):
        savedstate.load(tmp_path)


def test_changed_fields() -> None:
    old = {"cpus": 2, "ssh": {"localPort": 0}, "memory": 1}
    new = {"cpus": 1, "ssh": {"localPort": 2222}, "memory": 1}
    assert savedstate.changed_fields(old, new) == ["cpus", "ssh.localPort"]


def test_instant_mode_ram_file_must_be_unchanged(tmp_path: Path) -> None:
    ram = tmp_path / filenames.MEMORY_FILE
    ram.write_bytes(b"R" * 4096)
    manifest = make_saved(tmp_path)
    manifest["ramFile"] = savedstate.file_identity(ram)
    savedstate.write_manifest(tmp_path, manifest)
    saved = savedstate.load(tmp_path)
    assert saved is not None and savedstate.problems(saved, tmp_path, "7.2.0") == []
    ram.write_bytes(b"X" * 8192)
    assert any("RAM file changed" in p for p in savedstate.problems(saved, tmp_path, "7.2.0"))


@pytest.mark.parametrize("algorithm", sorted(savedstate.BLOCK_HASHES))
def test_state_digest_depends_on_contents_not_on_holes(tmp_path: Path, algorithm: str) -> None:
    block = savedstate.BLOCK
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    with sparse.open("wb") as f:  # data, a 3-block hole, data, a hole to a ragged end
        f.write(b"a" * 100)
        f.seek(4 * block + 5)
        f.write(b"b" * block)
        f.truncate(8 * block + 123)
    data = bytearray(8 * block + 123)
    data[:100] = b"a" * 100
    data[4 * block + 5 : 5 * block + 5] = b"b" * block
    dense.write_bytes(bytes(data))
    assert sparse.stat().st_blocks * 512 < len(data) // 2  # it really is sparse
    assert savedstate.state_digest(sparse, algorithm) == savedstate.state_digest(dense, algorithm)
    data[7 * block] = 1
    dense.write_bytes(bytes(data))
    assert savedstate.state_digest(sparse, algorithm) != savedstate.state_digest(dense, algorithm)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert savedstate.state_digest(empty, algorithm) != savedstate.state_digest(dense, algorithm)


def test_digest_is_the_same_however_many_threads_read(tmp_path: Path) -> None:
    block = savedstate.BLOCK
    f = tmp_path / "state"
    with f.open("wb") as out:  # data in some blocks, holes between, a hole to a ragged end
        for i in (0, 2, 3, 6):
            out.seek(i * block + i)
            out.write(bytes([i + 1]) * 1000)
        out.truncate(9 * block + 77)
    data = f.read_bytes()
    blocks = [data[i : i + block] for i in range(0, len(data), block)]
    reference = hashlib.sha256(b"".join(xxhash.xxh3_64_digest(b) for b in blocks)).hexdigest()
    with f.open("rb", buffering=0) as opened:
        for threads in range(1, 7):
            assert savedstate.fd_digest(opened.fileno(), threads=threads) == "blocks-xxh3:" + reference


def test_digest_reads_in_as_many_threads_as_asked_and_reports_their_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "state"
    f.write_bytes(b"x" * (6 * savedstate.BLOCK))
    readers: set[int] = set()

    def recording(block: memoryview) -> bytes:
        if block[0] == ord("x"):  # a data block, not the zero block hashed once beforehand
            readers.add(threading.get_ident())
        time.sleep(0.01)  # a thread that ran first cannot take the other shares too: each share is one thread's
        return bytes(block[:8])

    monkeypatch.setitem(savedstate.BLOCK_HASHES, "blocks-test", recording)
    with f.open("rb", buffering=0) as opened:
        savedstate.fd_digest(opened.fileno(), "blocks-test", threads=3)
        assert len(readers) == 3

        def failing(block: memoryview) -> bytes:
            raise OSError("read error")

        monkeypatch.setitem(savedstate.BLOCK_HASHES, "blocks-test", failing)
        with pytest.raises(OSError, match="read error"):
            savedstate.fd_digest(opened.fileno(), "blocks-test", threads=2)


def test_digests_verify_by_the_algorithm_they_name(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_bytes(b"x" * (savedstate.BLOCK + 7))
    new, old = savedstate.state_digest(f), savedstate.state_digest(f, "blocks-sha256")
    assert new.startswith(savedstate.DIGEST + ":") and old.startswith("blocks-sha256:")
    assert savedstate.digest_matches(f, new) and savedstate.digest_matches(f, old)  # an older save still verifies
    assert not savedstate.digest_matches(f, "md5:" + old.partition(":")[2])
    assert not savedstate.digest_matches(f, None)
    # blocks-sha256 is what earlier versions wrote: sha256 over the sha256 of each 1 MiB block as read
    data = f.read_bytes()
    blocks = [data[i : i + savedstate.BLOCK] for i in range(0, len(data), savedstate.BLOCK)]
    reference = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()
    assert old == "blocks-sha256:" + reference
    with f.open("r+b") as g:  # one byte changed, same size
        g.seek(savedstate.BLOCK + 3)
        g.write(b"y")
    assert not savedstate.digest_matches(f, new) and not savedstate.digest_matches(f, old)
