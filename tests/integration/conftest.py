"""Integration tests boot the real default guest under real QEMU.

They share one image cache ($TORPOR_CACHE, else the user's cache), so the guest is built once; each test gets
its own $TORPOR_HOME under /tmp (short, because unix socket paths are limited to 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from torpor.guest import builder
from torpor.hostagent.client import HostAgentClient
from torpor.store.cache import cache_root

pytestmark = pytest.mark.integration


@dataclass
class Torpor:
    home: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "torpor", "--no-tty", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"torpor {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def dir(self, name: str) -> Path:
        return self.home / name

    def info(self, name: str) -> Any:
        return HostAgentClient(self.dir(name) / "ha.sock").get("/v1/info")

    def sh(self, name: str, script: str, check: bool = True) -> str:
        """Run a shell script in the guest as the user; return its stdout."""
        return self.run("shell", name, "sh", "-c", script, check=check).stdout

    def events(self, name: str) -> str:
        return (self.dir(name) / "ha.stdout.log").read_text()

    def status(self, name: str) -> dict[str, Any]:
        import json

        out = self.run("list", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines()]
        return next(r for r in rows if r["name"] == name)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    cache = cache_root()
    builder.build_default(cache)  # once for the whole session
    return cache


@pytest.fixture
def torpor(image_cache: Path) -> Iterator[Torpor]:
    home = Path(tempfile.mkdtemp(prefix="torpor-it-", dir="/tmp"))
    (home / "_config").mkdir()
    # Fail fast instead of waiting the default five minutes if a guest does not come up.
    (home / "_config" / "default.yaml").write_text("bootTimeout: 120\nshutdownTimeout: 30\n")
    env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_CACHE=str(image_cache))
    t = Torpor(home, env)
    yield t
    for d in home.iterdir():
        if (d / "ha.pid").exists() or (d / "qemu.pid").exists():
            t.run("stop", "--force", d.name, check=False)
    shutil.rmtree(home, ignore_errors=True)


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.2) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def serves(port: int, text: str) -> bool:
    """Whether an HTTP server answers ``text`` on the host's 127.0.0.1:``port`` (a port forward into the guest)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return bool(r.read().decode() == text)
    except OSError:
        return False


def write_template(torpor: Torpor, name: str, body: str = "", memory: str = "512MiB") -> Path:
    path = torpor.home / f"{name}.yaml"
    path.write_text(f"images: [{{location: build:default}}]\nmemory: {memory}\n" + body)
    return path


# A counter in guest RAM (tmpfs) and a token only the guest's memory holds: both survive a restore only if the
# whole machine state does.
COUNTER = (
    "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.1; done' "
    "</dev/null >/dev/null 2>&1 & echo $! > /dev/shm/counter.pid"
)
