"""The host agent's SSH side: waiting until the guest's SSH server answers, the control master that shells,
copies and port forwards share, and adding or cancelling forwards through it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from torpor import subp
from torpor.guest import ssh
from torpor.store import filenames

log = logging.getLogger(__name__)


class SSHAccess:
    def __init__(self, inst_dir: Path, name: str) -> None:
        self.dir = inst_dir
        self.name = name
        self._master: asyncio.subprocess.Process | None = None

    def _argv(self, *options: str, command: list[str] | None = None) -> list[str]:
        return ssh.ssh_argv(self.dir, self.name, list(options), command)

    async def _run(self, *args: str, timeout: float = 15.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, "timed out"
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def answers(self) -> bool:
        """Whether the guest accepts torpor's key and runs a command."""
        code, _ = await self._run(
            *self._argv("-o", "ControlMaster=no", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", command=["true"])
        )
        return code == 0

    async def wait_until_answering(self, interval: float = 0.25) -> None:
        while not await self.answers():
            await asyncio.sleep(interval)

    async def start_master(self, timeout: float = 15.0) -> None:
        control = self.dir / filenames.SSH_CONTROL
        control.unlink(missing_ok=True)
        self._master = await asyncio.create_subprocess_exec(
            *self._argv("-M", "-N", "-o", "ControlPersist=no", "-o", "BatchMode=yes"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=subp.die_with_parent,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not control.exists():
            if self._master.returncode is not None or loop.time() > deadline:
                log.warning("the SSH control master did not come up")
                return
            await asyncio.sleep(0.02)

    async def stop_master(self) -> None:
        if self._master is not None and self._master.returncode is None:
            self._master.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._master.wait(), 5)
            if self._master.returncode is None:
                self._master.kill()
                await self._master.wait()
        self._master = None
        (self.dir / filenames.SSH_CONTROL).unlink(missing_ok=True)

    async def forward(self, spec: str) -> str | None:
        """Add ``-L spec`` to the master; return None on success, else ssh's complaint."""
        code, out = await self._run(*self._argv("-O", "forward", "-L", spec))
        return None if code == 0 else (out or f"exit code {code}")

    async def cancel(self, spec: str) -> None:
        code, out = await self._run(*self._argv("-O", "cancel", "-L", spec))
        if code != 0:
            log.warning("cancelling forward %s: %s", spec, out)
