"""The host agent's HTTP API server and the CLI's client, over a real unix socket."""

import asyncio
import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.hostagent.api import APIServer, HTTPError, Request
from torpor.hostagent.client import HostAgentClient


async def info(_req: Request) -> tuple[int, Any]:
    return 200, {"name": "x"}


async def echo(req: Request) -> tuple[int, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise HTTPError(400, "expected an object")
    return 200, body


async def boom(_req: Request) -> tuple[int, Any]:
    raise RuntimeError("bug")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ha.sock"
    loop = asyncio.new_event_loop()
    api = APIServer({("GET", "/v1/info"): info, ("PATCH", "/v1/echo"): echo, ("GET", "/v1/boom"): boom})
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(api.start(path))
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(5)
    yield path
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def test_socket_is_private(server: Path) -> None:
    assert stat.S_IMODE(server.stat().st_mode) == 0o600


def test_get_info(server: Path) -> None:
    assert HostAgentClient(server).get("/v1/info") == {"name": "x"}


def test_unknown_path_is_json_404(server: Path) -> None:
    status, body = HostAgentClient(server).request("GET", "/v1/nope")
    assert status == 404 and "no such endpoint" in body["message"]


def test_wrong_method_is_405_naming_the_allowed_ones(server: Path) -> None:
    status, body = HostAgentClient(server).request("DELETE", "/v1/info")
    assert status == 405 and "GET" in body["message"]


def test_bad_json_is_400(server: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(server))
    s.sendall(b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope")
    resp = b""
    while chunk := s.recv(4096):
        resp += chunk
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400")
    assert "not valid JSON" in json.loads(body)["message"]


def test_handler_error_is_400_with_message(server: Path) -> None:
    status, body = HostAgentClient(server).request("PATCH", "/v1/echo", [1, 2])
    assert status == 400 and body == {"message": "expected an object"}


def test_handler_bug_is_500_and_server_survives(server: Path) -> None:
    status, body = HostAgentClient(server).request("GET", "/v1/boom")
    assert status == 500 and "bug" in body["message"]
    assert HostAgentClient(server).get("/v1/info") == {"name": "x"}


def raw(server: Path, data: bytes, close_write: bool = True) -> tuple[int, dict[str, Any]]:
    """Send ``data`` as it is; the status and JSON body of the answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(server))
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        resp = b""
        while chunk := s.recv(4096):
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400),
        (b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}", 400),
        (b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}", 400),
        (b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}", 413),
        (b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/info HTTP/1.1\r\n", 400),  # the client stopped half-way through its headers
        (b"\x00\xff\x10binary junk\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_4xx_with_a_json_message(server: Path, request_bytes: bytes, status: int) -> None:
    got, body = raw(server, request_bytes)
    assert got == status and body["message"], body
    assert HostAgentClient(server).get("/v1/info") == {"name": "x"}  # and the server answers the next one


def test_a_chunked_body_is_read_whole(server: Path) -> None:
    head = b"PATCH /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = head + b'3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n'
    assert raw(server, request) == (200, {"a": 1})


def test_a_client_that_sends_nothing_holds_up_no_one(server: Path) -> None:
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(server))
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(server))
    half.sendall(b"GET /v1/info HTTP/1.1\r\nHo")
    try:
        for _ in range(3):
            assert HostAgentClient(server, timeout=2).get("/v1/info") == {"name": "x"}
    finally:
        idle.close()
        half.close()
