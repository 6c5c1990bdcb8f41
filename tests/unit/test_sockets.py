"""Unix socket forwards (portForwards with guestSocket and hostSocket): the configuration's rules and what the host
agent checks of a host socket's path before anything starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from torpor.config.schema import PortForward
from torpor.errors import ConfigError
from torpor.hostagent import sockets


def config(*rules: dict[str, object]) -> dict[str, object]:
    return {"portForwards": [PortForward.model_validate(r).model_dump(mode="json") for r in rules]}


def test_a_relative_host_socket_is_under_the_instance_directory_and_port_rules_are_not_socket_forwards() -> None:
    cfg = config(
        {"guestSocket": "/var/run/docker.sock", "hostSocket": "sock/docker.sock"},
        {"guestSocket": "/run/a.sock", "hostSocket": "/srv/a.sock"},
        {"guestSocket": "/run/b.sock", "hostSocket": "b.sock", "ignore": True},
        {"guestPort": 80, "hostPort": 8080},
    )
    assert sockets.from_config(Path("/inst"), cfg) == [
        sockets.SocketForward("/var/run/docker.sock", Path("/inst/sock/docker.sock")),
        sockets.SocketForward("/run/a.sock", Path("/srv/a.sock")),
    ]
    assert sockets.from_config(Path("/inst"), cfg)[0].spec() == "/inst/sock/docker.sock:/var/run/docker.sock"


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"guestSocket": "/run/a.sock"}, "go together"),
        ({"hostSocket": "a.sock"}, "go together"),
        ({"guestSocket": "run/a.sock", "hostSocket": "a.sock"}, "absolute path"),
        ({"guestSocket": "/run/a.sock", "hostSocket": "a.sock", "guestPort": 80}, "has no guestPort"),
    ],
)
def test_a_socket_forward_needs_both_paths_and_no_ports(rule: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        PortForward.model_validate(rule)


def test_a_host_socket_too_long_for_a_unix_socket_or_in_place_of_another_file_is_refused(tmp_path: Path) -> None:
    long = sockets.SocketForward("/run/a.sock", tmp_path / ("x" * 120) / "a.sock")
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's\n")
    other = sockets.SocketForward("/run/a.sock", taken)
    with pytest.raises(ConfigError) as e:
        sockets.check([long, other, sockets.SocketForward("/run/a.sock", tmp_path / "free.sock")])
    assert len(e.value.problems) == 2
    assert "more than a unix socket's path can hold (107)" in e.value.problems[0]
    assert "exists and is not a socket" in e.value.problems[1]
    sockets.prepare(other)  # (even if asked) another file is never removed
    sockets.remove(other)
    assert taken.read_text() == "the user's\n"


def test_a_socket_left_behind_is_replaced_and_removed_with_the_forward(tmp_path: Path) -> None:
    fwd = sockets.SocketForward("/run/a.sock", tmp_path / "sock" / "a.sock")
    sockets.prepare(fwd)
    assert (tmp_path / "sock").stat().st_mode & 0o777 == 0o700
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(fwd.host))
    assert sockets.problem(fwd) is None  # a socket: the forward takes its place
    sockets.prepare(fwd)
    assert not fwd.host.exists()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(fwd.host))
    sockets.remove(fwd)
    assert not fwd.host.exists()


def test_start_waits_until_docker_answers_through_the_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    fwd = sockets.SocketForward("/var/run/docker.sock", tmp_path / "docker.sock")
    answers = [b"HTTP/1.0 503 Service Unavailable\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nOK"]
    asked: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readline())
        writer.write(answers.pop(0) if answers else b"HTTP/1.0 200 OK\r\n\r\nOK")
        await writer.drain()
        writer.close()

    async def run() -> tuple[str | None, str | None]:
        server = await asyncio.start_unix_server(serve, str(fwd.host))
        async with server:
            answered = await sockets.docker_answers(fwd)
        monkeypatch.setattr(sockets, "DOCKER_TIMEOUT", 0.3)
        return answered, await sockets.docker_answers(fwd)  # nothing listens any more

    answered, gone = asyncio.run(run())
    assert answered is None and asked == [b"GET /_ping HTTP/1.0\r\n"] * 2
    assert gone is not None and "did not answer" in gone
