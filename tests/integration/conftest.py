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

    def status(self, name: str) -> dict[str, Any]:
        import json

        out = self.run("list", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines()]
        return next(r for r in rows if r["name"] == name)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    cache = builder.cache_root()
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
