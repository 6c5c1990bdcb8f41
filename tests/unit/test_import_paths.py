"""Start-up paths stay light: `torpor stop` (before it signals the agent) and the host agent's early restore
path (before QEMU is launched) import neither the heavy libraries nor modules they do not need (README, "How it
is built": every command and every restore pays for its imports)."""

import os
import subprocess
import sys
from pathlib import Path


def imported_by(statement: str, env: dict[str, str] | None = None) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return set(out.split())


def plain_run(argv: list[str], home: Path) -> set[str]:
    """What running ``torpor ARGV`` through main imports (it must fail: ``home`` is empty)."""
    env = {**os.environ, "TORPOR_HOME": str(home)}
    return imported_by(f"from torpor.cli.main import main\nassert main({argv!r}) == 1", env)


def test_stop_imports_little(tmp_path: Path) -> None:
    heavy = {"asyncio", "dataclasses", "pydantic", "typing", "subprocess", "argparse", "logging"}
    modules = imported_by("import torpor.cli.main, torpor.cli.stop, torpor.instance.stop")
    assert not modules & ({"torpor.instance.start", "torpor.store.savedstate"} | heavy)
    # A whole plain stop through main, here one that fails in the stop code (no such instance).
    modules = plain_run(["stop", "--save", "x"], tmp_path)
    assert "torpor.instance.stop" in modules
    assert not modules & heavy


def test_start_imports_neither_argparse_nor_logging(tmp_path: Path) -> None:
    """A plain `torpor start` through main, before it spawns the host agent (the restore is timed from the
    command on); here one that fails in the start code (a name no instance can have)."""
    modules = plain_run(["start", "Bad_Name"], tmp_path)
    assert "torpor.instance.start" in modules
    assert not modules & {"argparse", "logging", "pydantic", "asyncio"}


def test_early_restore_path_imports_little() -> None:
    modules = imported_by("import torpor.hostagent.launch")
    heavy = {"asyncio", "qemu.qmp", "pydantic", "dataclasses", "tempfile", "concurrent.futures"}
    assert not modules & heavy
    assert "torpor.hostagent.agent" not in modules and "torpor.guest.images" not in modules
    assert "torpor.driver.qemu.relay" not in modules  # imported only to restore a multifd state
