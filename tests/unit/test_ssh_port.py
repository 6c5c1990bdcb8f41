"""guest/ssh.free_port leaves alone the ports it is told to avoid (those saved states will bind again)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from torpor.guest import ssh


class _FakeSocket:
    """Binds to the next port of a fixed sequence, as the kernel might hand them out."""

    offered: Iterator[int] = iter([])
    open = 0

    def __init__(self, *args: Any) -> None:
        _FakeSocket.open += 1

    def __enter__(self) -> _FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        _FakeSocket.open -= 1

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(_FakeSocket.offered)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_skips_the_ports_to_avoid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _FakeSocket)
    _FakeSocket.offered = iter([40001, 40002, 40003])
    assert ssh.free_port(avoid={40001, 40002}) == 40003
    assert _FakeSocket.open == 0  # every socket it held while looking is closed
    _FakeSocket.offered = iter([40001])
    assert ssh.free_port(avoid={40002}) == 40001


def test_free_port_is_a_port_that_can_be_bound() -> None:
    port = ssh.free_port(avoid={0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
