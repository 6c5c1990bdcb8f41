"""Integration tests boot the real default guest under real QEMU.

They share one image cache ($TORPOR_CACHE, else the user's cache), so the guest is built once; each test gets
its own $TORPOR_HOME under /tmp (short, because unix socket paths are limited to 108 bytes).

A test that needs a running guest but is not about booting one starts from a saved guest instead
(:meth:`Torpor.from_saved`): each template is booted and saved once per session, in a home of its own, and the
test's instance is a clone of it (`torpor clone`), whose first start restores that running guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    saved_guests: SavedGuests | None = None

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "torpor", "--no-tty", *args],
            env={**self.env, **(env or {})},
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

    def from_saved(
        self, name: str, body: str = "", memory: str = "512MiB", prepare: str = "", saved: bool = True
    ) -> None:
        """Create ``name`` from the template of :func:`write_template` (``body``, ``memory``) as a clone of that
        template's guest, booted once per session, having run ``prepare`` in it, and saved: the instance's first
        `torpor start` restores it.  Not ``saved``: the clone without the saved state (stopped, its disk made)."""
        from torpor.instance.clone import clone
        from torpor.store import savedstate

        assert self.saved_guests is not None
        golden = self.saved_guests.get(template_text(body, memory), prepare)
        clone(golden, name, lambda _message: None, root=self.saved_guests.torpor.home, dst_root=self.home)
        for key in ("user", "user.pub"):  # the key the saved guest lets in
            src, dst = self.saved_guests.torpor.home / "_config" / key, self.home / "_config" / key
            if not dst.exists():
                shutil.copy2(src, dst)
        if not saved:
            savedstate.discard(self.dir(name))

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


@dataclass
class SavedGuests:
    """Guests booted and saved once per session, by template and preparation, for :meth:`Torpor.from_saved`."""

    torpor: Torpor
    names: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, template: str, prepare: str) -> str:
        key = (template, prepare)
        if key not in self.names:
            name = f"saved{len(self.names)}"
            path = self.torpor.home / f"{name}.yaml"
            path.write_text(template)
            self.torpor.run("create", "--name", name, str(path))
            self.torpor.run("start", name)
            if prepare:
                self.torpor.sh(name, prepare)
            self.torpor.run("stop", "--save", name)
            self.names[key] = name
        return self.names[key]


def new_home(image_cache: Path) -> Torpor:
    home = Path(tempfile.mkdtemp(prefix="torpor-it-", dir="/tmp"))
    (home / "_config").mkdir()
    # Fail fast instead of waiting the default five minutes if a guest does not come up.
    (home / "_config" / "default.yaml").write_text("bootTimeout: 120\nshutdownTimeout: 30\n")
    return Torpor(home, dict(os.environ, TORPOR_HOME=str(home), TORPOR_CACHE=str(image_cache)))


def remove_home(t: Torpor) -> None:
    for d in t.home.iterdir():
        if (d / "ha.pid").exists() or (d / "qemu.pid").exists():
            t.run("stop", "--force", d.name, check=False)
    shutil.rmtree(t.home, ignore_errors=True)


@pytest.fixture(scope="session")
def saved_guests(image_cache: Path) -> Iterator[SavedGuests]:
    t = new_home(image_cache)
    yield SavedGuests(t)
    remove_home(t)


@pytest.fixture
def torpor(image_cache: Path, saved_guests: SavedGuests) -> Iterator[Torpor]:
    t = new_home(image_cache)
    t.saved_guests = saved_guests
    yield t
    remove_home(t)


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


def template_text(body: str = "", memory: str = "512MiB") -> str:
    return f"images: [{{location: build:default}}]\nmemory: {memory}\n" + body


def write_template(torpor: Torpor, name: str, body: str = "", memory: str = "512MiB") -> Path:
    path = torpor.home / f"{name}.yaml"
    path.write_text(template_text(body, memory))
    return path


# Random data in guest RAM: a save or a load that takes long enough to land a signal or a kill in.
FILL = "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=400 2>/dev/null"

# A counter in guest RAM (tmpfs) and a token only the guest's memory holds: both survive a restore only if the
# whole machine state does.
COUNTER = (
    "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.1; done' "
    "</dev/null >/dev/null 2>&1 & echo $! > /dev/shm/counter.pid"
)
