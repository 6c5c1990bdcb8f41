"""The multifd relay (driver/qemu/relay.py) with sockets standing in for QEMU's channels: the layout of the
state file, the channels sent back in the order QEMU 7.2 needs, and a failed save leaving no usable file.
(With QEMU itself: tests/integration/test_mechanisms.py.)"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from torpor.driver.qemu import relay
from torpor.errors import DriverError

RAM = 8 << 20


def page_channel(index: int, payload: bytes) -> bytes:
    """What a multifd page channel starts with (magic, version, UUID, channel id), then ``payload``."""
    return b"\x11\x22\x33\x44" + b"\0\0\0\1" + bytes(16) + bytes([index]) + payload


def streams() -> dict[int, bytes]:
    """Region index -> the bytes QEMU sends on it: page channels 0 and 1, the main channel last (index 2)."""
    return {
        0: page_channel(0, os.urandom(3 << 20)),
        1: page_channel(1, os.urandom(1 << 20) + bytes(4096)),
        2: relay.MAIN_MAGIC + os.urandom(70_000),
    }


def send_as_qemu(sock: Path, data: dict[int, bytes], order: list[int]) -> None:
    """Open the channels in ``order`` (QEMU 7.2 opens the main one first) and send them concurrently."""
    conns = []
    for index in order:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
        conns.append((conn, data[index]))

    def send(conn: socket.socket, payload: bytes) -> None:
        with conn:
            for i in range(0, len(payload), 65536):  # in pieces, interleaved with the other channels
                conn.sendall(payload[i : i + 65536])

    threads = [threading.Thread(target=send, args=c) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_channels_go_to_their_regions_and_come_back(tmp_path: Path) -> None:
    sock, state = tmp_path / "mig.sock", tmp_path / "state.bin"
    data = streams()
    recorder = relay.Recorder(sock, state, channels=2, ram=RAM)
    send_as_qemu(sock, data, [2, 1, 0])
    recorder.finish()

    region = relay.region_size(RAM)
    parts = relay.regions(state)
    assert parts == [
        (relay.HEADER, len(data[0])),
        (relay.HEADER + region, len(data[1])),
        (relay.HEADER + 2 * region, len(data[2])),
    ]
    with state.open("rb") as f:
        for index, (offset, length) in enumerate(parts):
            f.seek(offset)
            assert f.read(length) == data[index]
    assert state.stat().st_blocks * 512 < sum(map(len, data.values())) + 2 * relay.HEADER  # the rest is holes
    assert not sock.exists()

    # Back: QEMU listens; the relay connects the main channel first, then the page channels.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(3)
    feed = relay.Feed(sock, state)
    received = []
    for _ in data:
        conn, _ = listener.accept()
        with conn:
            chunks = []
            while chunk := conn.recv(1 << 20):
                chunks.append(chunk)
            received.append(b"".join(chunks))
    for t in feed.threads:
        t.join()
    assert feed.progress() == (sum(map(len, data.values())),) * 2
    listener.close()
    assert received[0] == data[2]  # accepted first: the main channel
    assert sorted(received[1:]) == sorted([data[0], data[1]])
    assert not sock.exists()


def test_a_channel_larger_than_its_region_fails_the_save(tmp_path: Path) -> None:
    sock, state = tmp_path / "mig.sock", tmp_path / "state.bin"
    data = streams()
    data[1] = page_channel(1, bytes(relay.region_size(RAM)))  # more than every page of RAM once
    recorder = relay.Recorder(sock, state, channels=2, ram=RAM)
    send_as_qemu(sock, data, [2, 0, 1])
    with pytest.raises(DriverError, match="outgrew"):
        recorder.finish()
    with pytest.raises(DriverError, match="no valid header"):
        relay.regions(state)


def test_an_aborted_save_leaves_no_usable_file(tmp_path: Path) -> None:
    sock, state = tmp_path / "mig.sock", tmp_path / "state.bin"
    data = streams()
    recorder = relay.Recorder(sock, state, channels=2, ram=RAM)
    send_as_qemu(sock, data, [2, 0])  # QEMU failed before its last channel
    started = time.monotonic()
    recorder.abort()
    assert time.monotonic() - started < relay.ACCEPT_TIMEOUT / 10  # it stopped waiting, not timed out
    with pytest.raises(DriverError, match="no valid header"):
        relay.regions(state)
    assert not sock.exists()
