"""Unix socket forwards: Lima's ``portForwards`` entries with ``guestSocket`` and ``hostSocket``, a socket in the
guest reached through one on the host, over the SSH control master (``ssh -O forward -L HOST:GUEST``) as in Lima;
with ``reverse: true`` a socket of the host's reached through one in the guest (``-R GUEST:HOST``).

The host socket is the master's: made 0600 (the master's StreamLocalBindMask) in a directory made 0700, in place
of a socket left at its path (never of another file), and removed when the instance stops or is saved.  A save
ends the master, so a client connected through a forward sees its connection closed rather than waiting; the
restore forwards again before it reports ready (a reverse forward's guest socket, left by the saved SSH session,
is removed first).  The guest's SSH server must forward unix sockets (OpenSSH
does; the default guest's dropbear does not).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PATH = 107  # a unix socket's path: sun_path's 108 bytes, less the terminating NUL


@dataclass(frozen=True)
class SocketForward:
    guest: str
    host: Path
    reverse: bool = False  # Lima's reverse: the host's socket (the user's, never made or removed) in the guest

    def spec(self) -> str:
        """The ``-L`` (``-R`` when reverse) argument of ssh for this forward."""
        return f"{self.guest}:{self.host}" if self.reverse else f"{self.host}:{self.guest}"

    def __str__(self) -> str:
        return f"guest {self.guest} -> {self.host}" if self.reverse else f"{self.host} -> guest {self.guest}"

    @property
    def is_docker(self) -> bool:
        """Whether it is the guest's Docker engine (whose clients on the host need DOCKER_HOST)."""
        return self.guest in DOCKER_SOCKETS


DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def from_config(inst_dir: Path, config: dict[str, Any]) -> list[SocketForward]:
    """The socket forwards of a configuration's JSON; a relative ``hostSocket`` is under the instance directory."""
    return [
        # (an absolute hostSocket stays as it is)
        SocketForward(r["guestSocket"], inst_dir / r["hostSocket"], bool(r.get("reverse")))
        for r in config["portForwards"]
        if r.get("guestSocket") is not None and not r["ignore"]
    ]


def problem(fwd: SocketForward) -> str | None:
    """Why ``fwd``'s host socket cannot be made, or None."""
    size = len(os.fsencode(fwd.host))
    if size > MAX_PATH:
        return (
            f"hostSocket {fwd.host} is {size} bytes long, more than a unix socket's path can hold ({MAX_PATH}); "
            "use a shorter path (a relative one is under the instance directory)"
        )
    if ":" in str(fwd.host):
        return f"hostSocket {fwd.host} has a ':' in it, which ssh's -L cannot take; use another path"
    if fwd.reverse:
        return None  # (the user's socket: it may appear later; ssh connects to it when the guest does)
    try:
        mode = fwd.host.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"hostSocket {fwd.host} exists and is not a socket; move it away or choose another path"
    return None


DOCKER_TIMEOUT = 30.0


async def docker_answers(fwd: SocketForward) -> str | None:
    """Ask Docker's API on the forward's host socket for ``/_ping`` until it answers 200 (None), or say why not
    after DOCKER_TIMEOUT: what `start` waits for, so that `docker ps` works the moment it returns (the first
    request through a new forward, into a guest just restored, is the slow one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DOCKER_TIMEOUT
    why = ""
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_unix_connection(str(fwd.host))
            try:
                writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), deadline - loop.time())
            finally:
                writer.close()
            if status.split(b" ")[1:2] == [b"200"]:
                return None
            why = f"it answered {status.decode(errors='replace').strip()!r}"
        except (OSError, TimeoutError) as e:
            why = str(e) or type(e).__name__
        await asyncio.sleep(0.05)
    return f"Docker did not answer on {fwd.host} within {DOCKER_TIMEOUT:.0f} s ({why})"


def check(forwards: list[SocketForward]) -> None:
    """Before anything starts: every host socket can be made."""
    problems = [f"portForwards: {p}" for fwd in forwards if (p := problem(fwd)) is not None]
    if problems:
        raise ConfigError("a socket forward cannot be set up", problems, hint="fix the portForwards listed above")


def prepare(fwd: SocketForward) -> None:
    """Make the host socket's directory (0700) and remove a socket left at its path."""
    if fwd.reverse:
        return
    fwd.host.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove(fwd)


def remove(fwd: SocketForward) -> None:
    """Remove the host socket (a socket only: another file that took its place is the user's; a reverse
    forward's is the user's too)."""
    if fwd.reverse:
        return
    try:
        if stat.S_ISSOCK(fwd.host.lstat().st_mode):
            fwd.host.unlink()
    except FileNotFoundError:
        pass
