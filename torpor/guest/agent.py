"""Client of the QEMU guest agent (``qemu-ga``) over its virtio-serial channel.

The host agent uses it to read files in the guest (listening ports, provisioning logs) and to set the guest's
clock.  qemu-ga speaks QMP-style JSON without a greeting; ``guest-sync-delimited`` resynchronises the stream
after a reconnect or a guest reboot (its reply is preceded by a 0xFF byte).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from torpor.errors import DriverError

log = logging.getLogger(__name__)

READ_CHUNK = 48 * 1024


class GuestAgentError(DriverError):
    pass


class GuestAgent:
    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._synced = False

    async def connect(self, path: Path) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        self._synced = False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _sync(self) -> None:
        assert self._reader is not None and self._writer is not None
        ident = random.randint(1, 2**31)
        # 0xFF resets qemu-ga's parser; the reply to guest-sync-delimited is preceded by 0xFF too.
        self._writer.write(
            b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": ident}}).encode()
        )
        await self._writer.drain()
        while True:
            await self._reader.readuntil(b"\xff")
            line = await self._reader.readline()
            try:
                if json.loads(line).get("return") == ident:
                    self._synced = True
                    return
            except ValueError:
                continue

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run one command; raise :class:`GuestAgentError` on an error reply or when the guest does not answer."""
        if self._reader is None or self._writer is None:
            raise GuestAgentError("not connected to the guest agent")
        async with self._lock:
            try:
                return await asyncio.wait_for(self._execute(command, arguments), timeout)
            except TimeoutError:
                self._synced = False
                raise GuestAgentError(f"the guest agent did not answer {command} within {timeout:.0f} s") from None
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                self._synced = False
                raise GuestAgentError(f"guest agent channel: {e}") from None

    async def _execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        assert self._reader is not None and self._writer is not None
        if not self._synced:
            await self._sync()
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._writer.write(json.dumps(msg).encode() + b"\n")
        await self._writer.drain()
        while True:
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("the guest agent channel closed")
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            reply = json.loads(line)
            if "error" in reply:
                err = reply["error"]
                raise GuestAgentError(f"guest agent {command}: {err.get('desc', err)}")
            if "return" in reply:
                return reply["return"]

    async def read_file(self, path: str, limit: int = 1024 * 1024) -> bytes:
        handle = await self.execute("guest-file-open", {"path": path, "mode": "r"})
        data = b""
        try:
            while len(data) < limit:
                chunk = await self.execute("guest-file-read", {"handle": handle, "count": READ_CHUNK})
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            await self.execute("guest-file-close", {"handle": handle})
        return data

    async def run(self, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """Run ``argv`` in the guest (as root); return its exit code and its output (stdout, then stderr)."""
        started = await self.execute("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        deadline = time.monotonic() + timeout
        while True:
            status = await self.execute("guest-exec-status", {"pid": started["pid"]})
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")) + base64.b64decode(status.get("err-data", ""))
                return int(status.get("exitcode", -1)), out.decode(errors="replace")
            if time.monotonic() > deadline:
                raise GuestAgentError(f"{argv[0]} in the guest did not finish within {timeout:.0f} s")
            await asyncio.sleep(0.02)

    async def set_time(self, ns: int | None = None) -> None:
        """Set the guest's clock to the host's (now, unless ``ns`` is given) and its hardware clock with it."""
        await self.execute("guest-set-time", {"time": ns if ns is not None else time.time_ns()})
