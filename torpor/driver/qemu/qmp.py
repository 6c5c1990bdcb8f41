"""One thin session class over ``qemu.qmp``: the host agent's single long-lived QMP connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError

from torpor.errors import DriverError, QMPCommandError

log = logging.getLogger(__name__)


class QMPSession:
    def __init__(self, name: str) -> None:
        self._client = QMPClient(name)
        # qemu.qmp logs every failed connection attempt as an error; torpor reports failures itself.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

    async def connect(self, path: Path, timeout: float, alive: Any = None) -> None:
        """Connect to QEMU's QMP socket, retrying while QEMU is still creating it.

        ``alive`` is an optional callable; when it returns False the wait ends early (QEMU died).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not path.exists():
                if loop.time() > deadline or (alive is not None and not alive()):
                    raise DriverError(f"QEMU did not create its QMP socket {path}")
                await asyncio.sleep(0.005)
                continue
            try:
                await self._client.connect(str(path))
                return
            except ConnectError as e:
                if loop.time() > deadline or (alive is not None and not alive()):
                    raise DriverError(f"cannot connect to QEMU's QMP socket {path}: {e}") from None
                await asyncio.sleep(0.01)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            return await self._client.execute(command, arguments)
        except ExecuteError as e:
            raise QMPCommandError(command, e.error_class, e.error.error.desc) from None
        except (QMPError, OSError, EOFError) as e:
            raise DriverError(f"QMP {command} failed: {e or type(e).__name__} (did QEMU exit?)") from None

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand ``fd`` to QEMU under ``name`` (SCM_RIGHTS, then ``getfd``), e.g. for ``migrate fd:NAME``."""
        self._client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})

    async def events(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        """Yield QMP events (optionally only those named) until the session closes."""
        listener = EventListener(list(names) or None)
        with self._client.listen(listener):
            async for event in listener:
                yield dict(event)

    async def close(self) -> None:
        try:
            await self._client.disconnect()
        except Exception as e:
            log.debug("QMP disconnect: %s", e)
