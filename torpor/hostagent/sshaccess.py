"""The host agent's SSH side: waiting until the guest's SSH server answers, the control master that shells,
copies and port forwards share, and adding or cancelling forwards through it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

from torpor import subp
from torpor.guest import ssh
from torpor.store import filenames

log = logging.getLogger(__name__)


class SSHAccess:
    def __init__(self, inst_dir: Path, name: str) -> None:
        self.dir = inst_dir
        self.name = name
        self._master: subprocess.Popen[bytes] | None = None

    def _argv(self, *options: str, command: list[str] | None = None) -> list[str]:
        return ssh.ssh_argv(self.dir, self.name, list(options), command)

    async def _run(self, *args: str, timeout: float = 15.0) -> tuple[int, str]:
        return await subp.run_async(args, timeout)

    async def run(self, command: list[str], timeout: float = 15.0) -> tuple[int, str]:
        """Run ``command`` in the guest through the master; return the exit code and the output."""
        return await self._run(*self._argv(command=command), timeout=timeout)

    async def connect_master(self, first: subprocess.Popen[bytes] | None = None, interval: float = 0.1) -> None:
        """Connect the control master, retrying until the guest's SSH server accepts torpor's key.

        The master's control socket appears only once it has authenticated, so its presence is the readiness
        test as well: one SSH handshake instead of a probe followed by the master's own.  ``first`` is a master
        already started (by the early restore path, as soon as the VM ran).
        """
        control = self.dir / filenames.SSH_CONTROL
        while True:
            if first is None:
                control.unlink(missing_ok=True)
            master, first = first or ssh.spawn_master(self.dir, self.name), None
            while master.poll() is None and not control.exists():
                await asyncio.sleep(0.005)
            if master.poll() is None:
                self._master = master
                return
            await asyncio.sleep(interval)

    def end_master(self) -> None:
        """Ask the control master to exit (the port forwards, its listening sockets, close with it) without
        waiting: a stop goes on with the save meanwhile, and :meth:`stop_master` reaps it."""
        if self._master is not None and self._master.poll() is None:
            self._master.terminate()
        (self.dir / filenames.SSH_CONTROL).unlink(missing_ok=True)

    async def stop_master(self) -> None:
        """:meth:`end_master`, then wait for it to exit (killing it after 5 s)."""
        self.end_master()
        master, self._master = self._master, None
        if master is not None and master.poll() is None:
            try:
                await asyncio.to_thread(master.wait, 5)
            except subprocess.TimeoutExpired:
                master.kill()
                await asyncio.to_thread(master.wait)

    async def forward(self, spec: str, reverse: bool = False) -> str | None:
        """Add ``-L spec`` (``-R``) to the master; return None on success, else ssh's complaint."""
        code, out = await self._run(*self._argv("-O", "forward", "-R" if reverse else "-L", spec))
        return None if code == 0 else (out or f"exit code {code}")

    async def cancel(self, spec: str) -> None:
        code, out = await self._run(*self._argv("-O", "cancel", "-L", spec))
        if code != 0:
            log.warning("cancelling forward %s: %s", spec, out)
