"""virtiofsd, the vhost-user daemon behind a virtiofs mount: one per mount, started by the driver before QEMU
connects to its socket, and again for each time the device is plugged back in after a restore.

torpor runs QEMU's C virtiofsd (Debian 12 ships it in ``qemu-system-common`` as /usr/lib/qemu/virtiofsd).  It
cannot hand its state over in a migration, which is why the driver unplugs virtiofs devices before a save (see
QemuDriver.detach_shares).  Its namespace sandbox needs root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from pathlib import Path

from torpor import subp
from torpor.errors import DriverError

log = logging.getLogger(__name__)

# Where distributions install it (Debian 12's qemu-system-common, Fedora's and Debian 13's virtiofsd packages).
CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/local/libexec/virtiofsd")
SOCKET_TIMEOUT = 10.0


def find() -> str:
    """The virtiofsd to run: ``$TORPOR_VIRTIOFSD``, else ``virtiofsd`` on PATH, else a distribution's path."""
    if env := os.environ.get("TORPOR_VIRTIOFSD"):
        return env
    found = shutil.which("virtiofsd") or next((c for c in CANDIDATES if os.access(c, os.X_OK)), None)
    if found is None:
        raise DriverError(
            "mountType virtiofs needs virtiofsd, and this host has none "
            f"(looked on PATH and in {', '.join(CANDIDATES)})",
            hint="install it (Debian 12: qemu-system-common has /usr/lib/qemu/virtiofsd), set $TORPOR_VIRTIOFSD, "
            "or use mountType: reverse-sshfs",
        )
    return found


class Virtiofsd:
    """One daemon serving ``source`` on ``socket`` until QEMU disconnects (it then exits) or :meth:`stop`; what it
    prints goes to ``log_file``."""

    def __init__(self, binary: str, source: Path, socket: Path, log_file: Path) -> None:
        self.binary, self.source, self.socket, self.log_file = binary, source, socket, log_file
        self._popen: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it and wait until its socket is there for QEMU to connect to."""
        self.socket.unlink(missing_ok=True)
        argv = [self.binary, f"--socket-path={self.socket}", "-o", f"source={self.source}", "-o", "cache=auto"]
        argv += ["-o", "log_level=warn"]
        with self.log_file.open("ab") as out:
            popen = self._popen = subp.spawn(argv, stderr=out, group=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SOCKET_TIMEOUT
        while not self.socket.exists():
            if popen.poll() is not None or loop.time() > deadline:
                await self.stop()
                err = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                raise DriverError(
                    f"virtiofsd for {self.source} did not start"
                    + (f" (exit code {popen.returncode})" if popen.returncode is not None else "")
                    + (f": {' '.join(err)}" if err else ""),
                    hint="QEMU's C virtiofsd needs root; or use mountType: reverse-sshfs",
                )
            await asyncio.sleep(0.005)
        log.info("virtiofsd serves %s on %s (pid %d)", self.source, self.socket, popen.pid)

    async def stop(self) -> None:
        popen, self._popen = self._popen, None
        if popen is not None and popen.poll() is None:
            popen.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(popen.wait), 5)
            except TimeoutError:
                popen.kill()
                await asyncio.to_thread(popen.wait)
        self.socket.unlink(missing_ok=True)
