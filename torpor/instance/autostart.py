"""Autostart: a systemd user unit that runs an instance's host agent for the length of the login session.

systemd starts ``torpor hostagent NAME`` in the foreground at login and sends it SIGTERM at logout or shutdown;
the agent then does what ``torpor stop`` would: with ``saveOnStop: true`` the VM is saved, and the next login
restores it.  ``KillMode=mixed`` sends that signal to the agent only, never straight to QEMU.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from torpor import subp
from torpor.config.layering import load_effective
from torpor.config.schema import Config
from torpor.errors import CommandError, InstanceStateError, TorporError
from torpor.store import atomic, filenames
from torpor.store.instance import home, inspect, read_instance_yaml

Report = Callable[[str], None]
STOP_MARGIN = 60  # seconds: QEMU quitting and the agent's cleanup
SAVE_RATE = 100 * 10**6  # bytes/s, a slow disk: the time a save of all the guest's RAM may take at logout


def unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def unit_name(name: str) -> str:
    return f"torpor-{name}.service"


def unit_text(name: str, torpor_home: Path, python: str, stop_timeout: int) -> str:
    return f"""[Unit]
Description=torpor instance {name}
Documentation=https://github.com/lima-vm/lima/pull/2900

[Service]
Type=exec
Environment=TORPOR_HOME={torpor_home}
ExecStart={python} -m torpor hostagent {name}
# Only the host agent gets the stop signal: it saves the VM (saveOnStop: true) or shuts the guest down.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
Restart=no

[Install]
WantedBy=default.target
"""


def stop_timeout(config: Config) -> int:
    """Seconds systemd waits for the agent to stop before it kills it, and the VM with it: a save of all the
    guest's RAM on a slow disk, then (should the save fail) the guest's shutdown, then the margin."""
    return math.ceil(config.memory / SAVE_RATE) + config.shutdownTimeout + STOP_MARGIN


def enable(name: str, report: Report) -> Path:
    inst = inspect(name)
    if not (inst.dir / filenames.DISK).exists():
        raise InstanceStateError(
            f"instance {name!r} has never been started", hint=f"run `torpor start {name}` once first"
        )
    config = load_effective(home(), read_instance_yaml(inst.dir), str(inst.dir / filenames.INSTANCE_YAML)).config
    if not config.saveOnStop:
        report(f"note: saveOnStop is false for {name!r}: logout will shut the VM down, not save it")
    path = unit_dir() / unit_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = unit_text(name, home(), sys.executable, stop_timeout(config))
    atomic.write_text(path, text)
    if shutil.which("systemd-analyze"):
        try:
            subp.run(["systemd-analyze", "verify", path], timeout=60)
        except CommandError as e:
            path.unlink()
            raise TorporError(f"systemd rejected the unit: {e.stderr.strip()}") from None
    _systemctl(["daemon-reload"], report)
    if _systemctl(["enable", unit_name(name)], report):
        report(f"enabled {unit_name(name)}: {name!r} starts at login and stops (saving if set) at logout")
    else:
        report(f"installed {path}; enable it with `systemctl --user enable {unit_name(name)}`")
    return path


def disable(name: str, report: Report) -> None:
    path = unit_dir() / unit_name(name)
    if not path.exists():
        raise InstanceStateError(f"autostart is not enabled for {name!r}")
    _systemctl(["disable", unit_name(name)], report)
    path.unlink()
    _systemctl(["daemon-reload"], report)
    report(f"removed {path}")


def _systemctl(args: list[str], report: Report) -> bool:
    if not shutil.which("systemctl"):
        return False
    try:
        subp.run(["systemctl", "--user", *args], timeout=60)
    except CommandError as e:
        report(f"systemctl --user {' '.join(args)} failed: {e.stderr.strip().splitlines()[-1:] or e}")
        return False
    return True
