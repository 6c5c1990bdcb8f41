"""The mounts' relay between a guest's SFTP client and the host's real sftp-server, across a save and a restore.

The test stands where QEMU is: it listens on the channel's socket as QEMU's chardev does and speaks SFTP on it as
the guest's sshfs does, so that what the guest would see is checked packet by packet.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from torpor.hostagent import mounts
from torpor.hostagent.mounts import Relay

R, W, A = 0x1, 0x2, 0x4  # SFTP open flags: read, write, append
FX_PERMISSION_DENIED = 3


def s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


class GuestEnd:
    """The guest's end of a mount's channel (QEMU listens; the relay connects)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None
        self.next_id = 1

    async def listen(self) -> None:
        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.accepted.put((r, w))

        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(on_connect, str(self.path))

    async def accept(self) -> None:
        self.r, self.w = await asyncio.wait_for(self.accepted.get(), 5)

    async def quit(self) -> None:
        """QEMU quits: the channel closes."""
        assert self.w is not None and self.server is not None
        self.w.close()
        self.server.close()
        await self.server.wait_closed()

    def send(self, kind: int, payload: bytes) -> int:
        assert self.w is not None
        req_id = self.next_id
        self.next_id += 1
        body = bytes([kind]) + struct.pack(">I", req_id) + payload
        self.w.write(struct.pack(">I", len(body)) + body)
        return req_id

    async def reply(self) -> tuple[int, int, bytes]:
        """The next packet: its type, request id and the rest."""
        assert self.r is not None
        (n,) = struct.unpack(">I", await asyncio.wait_for(self.r.readexactly(4), 5))
        body = await self.r.readexactly(n)
        return body[0], struct.unpack_from(">I", body, 1)[0], body[5:]

    async def init(self) -> None:
        assert self.w is not None
        self.w.write(struct.pack(">IBI", 5, mounts.INIT, 3))
        assert (await self.reply())[0] == mounts.VERSION

    async def open(self, path: bytes, pflags: int) -> bytes:
        req = self.send(mounts.OPEN, s(path) + struct.pack(">II", pflags, 0))
        kind, rid, rest = await self.reply()
        assert (kind, rid) == (mounts.HANDLE, req), rest
        return rest[4:]

    async def read(self, handle: bytes, offset: int, n: int) -> bytes:
        req = self.send(mounts.READ, s(handle) + struct.pack(">QI", offset, n))
        return await self.data(req)

    async def data(self, req: int) -> bytes:
        kind, rid, rest = await self.reply()
        assert rid == req
        assert kind == mounts.DATA, f"expected data, got {kind}: {rest!r}"
        return rest[4:]

    async def status(self, req: int) -> int:
        kind, rid, rest = await self.reply()
        assert (kind, rid) == (mounts.STATUS, req), rest
        return int(struct.unpack_from(">I", rest)[0])


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    d = tmp_path / "project with spaces"
    d.mkdir()
    (d / "log.txt").write_bytes(b"hello")
    (d / "gone.txt").write_bytes(b"soon removed")
    return d


async def _session(host_dir: Path, channel: Path, writable: bool = True) -> tuple[GuestEnd, Relay]:
    guest = GuestEnd(channel)
    await guest.listen()
    relay = Relay(0, host_dir, writable, channel)
    await relay.connect()
    await guest.accept()
    await guest.init()
    return guest, relay


async def _restored(host_dir: Path, channel: Path, saved: GuestEnd, state: dict[str, Any]) -> tuple[GuestEnd, Relay]:
    """The guest's end and a new relay after a restore of ``state``: the guest goes on with its request ids."""
    guest = GuestEnd(channel)
    guest.next_id = saved.next_id
    await guest.listen()
    relay = Relay(0, host_dir, True, channel)
    await relay.adopt()
    await relay.resume_session(state)
    await guest.accept()
    return guest, relay


def test_a_session_goes_on_after_a_save_and_a_restore_with_its_handles_and_the_requests_sent_meanwhile(
    host_dir: Path, tmp_path: Path
) -> None:
    async def body() -> None:
        guest, relay = await _session(host_dir, tmp_path / "mount0.sock")
        log = await guest.open(b"log.txt", R | W | A)
        gone = await guest.open(b"gone.txt", R)
        assert await guest.read(log, 0, 100) == b"hello"
        await relay.hold()
        parked = guest.send(mounts.READ, s(log) + struct.pack(">QI", 0, 100))  # sent as the VM stops
        await asyncio.sleep(0.05)
        await guest.quit()
        state = json.loads(json.dumps(await relay.export(final=True)))  # as the manifest keeps it
        await relay.close()

        # While saved: the host changes one file and removes the other.
        with (host_dir / "log.txt").open("ab") as f:
            f.write(b" world")
        (host_dir / "gone.txt").unlink()

        restored, relay2 = await _restored(host_dir, tmp_path / "mount0.sock", guest, state)
        assert await restored.data(parked) == b"hello world"  # the request sent as the VM stopped, served now
        append = restored.send(mounts.WRITE, s(log) + struct.pack(">Q", 0) + s(b"!"))
        assert await restored.status(append) == mounts.FX_OK
        assert (host_dir / "log.txt").read_bytes() == b"hello world!"
        lost = restored.send(mounts.READ, s(gone) + struct.pack(">QI", 0, 10))
        assert await restored.status(lost) == mounts.FX_NO_SUCH_FILE
        assert any("gone.txt" in item for item in relay2.lost)
        close = restored.send(mounts.CLOSE, s(log))
        assert await restored.status(close) == mounts.FX_OK
        assert relay2.open_handles == 1  # the lost one, until the guest closes it
        await relay2.close()

    run(body)


def test_a_snapshot_keeps_the_session_and_the_vm_goes_on_with_it(host_dir: Path, tmp_path: Path) -> None:
    async def body() -> None:
        guest, relay = await _session(host_dir, tmp_path / "mount0.sock")
        log = await guest.open(b"log.txt", R)
        await relay.hold()
        parked = guest.send(mounts.READ, s(log) + struct.pack(">QI", 0, 100))
        await asyncio.sleep(0.05)
        state = await relay.export(final=False)
        await relay.release()
        assert await guest.data(parked) == b"hello"  # answered once the VM goes on
        assert list(state["handles"]) == [log.hex()]
        assert state["pending"], "the request sent while paused belongs to the snapshot"
        await relay.close()

    run(body)


def test_a_read_only_mount_refuses_writes_on_the_host_side_too(host_dir: Path, tmp_path: Path) -> None:
    async def body() -> None:
        guest, relay = await _session(host_dir, tmp_path / "mount0.sock", writable=False)
        req = guest.send(mounts.OPEN, s(b"new.txt") + struct.pack(">II", W | 0x8, 0))  # write, create
        assert await guest.status(req) == FX_PERMISSION_DENIED
        assert not (host_dir / "new.txt").exists()
        await relay.close()

    run(body)


def test_a_host_directory_gone_while_saved_answers_errors_instead_of_hanging(host_dir: Path, tmp_path: Path) -> None:
    async def body() -> None:
        guest, relay = await _session(host_dir, tmp_path / "mount0.sock")
        log = await guest.open(b"log.txt", R)
        await relay.hold()
        await guest.quit()
        state: dict[str, Any] = await relay.export(final=True)
        await relay.close()
        for f in host_dir.iterdir():
            f.unlink()
        host_dir.rmdir()

        restored, relay2 = await _restored(host_dir, tmp_path / "mount0.sock", guest, state)
        req = restored.send(mounts.READ, s(log) + struct.pack(">QI", 0, 10))
        assert await restored.status(req) == mounts.FX_FAILURE
        assert relay2.lost and "project with spaces" in relay2.lost[0]
        await relay2.close()

    run(body)


def test_a_missing_location_is_an_error_before_anything_starts(tmp_path: Path) -> None:
    from torpor.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist on the host") as e:
        mounts.check_locations({"mounts": [{"location": str(tmp_path / "nope"), "writable": False}]})
    assert "mkdir -p" in (e.value.hint or "")


def test_the_guests_mount_points_are_read_with_their_escapes() -> None:
    text = "torpor: /home/me/my\\040project fuse.sshfs rw 0 0\nproc /proc proc rw 0 0\n"
    assert mounts.guest_mount_points(text) == {"/home/me/my project"}


def test_a_server_that_exits_answers_errors_instead_of_hanging(host_dir: Path, tmp_path: Path) -> None:
    async def body() -> None:
        import os
        import signal

        guest, relay = await _session(host_dir, tmp_path / "mount0.sock")
        log = await guest.open(b"log.txt", R)
        assert relay._server is not None
        os.kill(relay._server.pid, signal.SIGKILL)
        await relay._server.wait()
        req = guest.send(mounts.READ, s(log) + struct.pack(">QI", 0, 10))
        assert await guest.status(req) == mounts.FX_FAILURE
        assert "sftp-server exited" in relay.dead
        await relay.close()

    run(body)
