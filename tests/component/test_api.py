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
