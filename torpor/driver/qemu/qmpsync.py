"""A minimal synchronous QMP client (standard library only) for the few commands sent before asyncio exists.

The host agent's early restore path uses it to start QEMU's load of a saved state while the rest of the agent is
still being imported; it then disconnects, and the agent's asyncio session (qmp.py) connects for the rest.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from torpor.errors import DriverError


class SyncQMP:
    def __init__(self, path: Path, timeout: float, alive: Any) -> None:
        """Connect to QEMU's QMP socket (retrying while QEMU creates it) and leave capabilities negotiation."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline or not alive():
                    raise DriverError(f"cannot connect to QEMU's QMP socket {path}: {e}") from None
                time.sleep(0.002)
        sock.settimeout(timeout)
        self._sock = sock
        self._file = sock.makefile("rb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self._file.readline()
            if not line:
                raise DriverError("QEMU closed its QMP connection (did it exit?)")
            msg = json.loads(line)
            if "event" not in msg:
                return dict(msg)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, fd: int | None = None) -> Any:
        data = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}).encode() + b"\n"
        if fd is not None:
            socket.send_fds(self._sock, [data], [fd])
        else:
            self._sock.sendall(data)
        reply = self._read()
        if "error" in reply:
            raise DriverError(f"QMP {command} failed: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        self._file.close()
        self._sock.close()
