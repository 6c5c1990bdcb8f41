"""Watching QEMU from asyncio.

QEMU is started with :func:`torpor.subp.spawn_daemon` (``subprocess.Popen``), which needs no event loop: the host
agent's early restore path launches QEMU before it has imported asyncio.  :class:`QemuProcess` then waits for the
process through a pidfd and reads its stderr inside the loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator


class QemuProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    async def wait(self) -> int:
        """Wait for the exit without blocking the loop (a pidfd becomes readable when the process exits)."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        pidfd = os.pidfd_open(self.popen.pid)
        loop.add_reader(pidfd, readable)
        try:
            if self.popen.poll() is None:
                await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self.popen.wait()

    async def stderr_lines(self) -> AsyncIterator[str]:
        assert self.popen.stderr is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self.popen.stderr)
        async for raw in reader:
            yield raw.decode(errors="replace").rstrip()
