"""mypy --strict and ruff over the package, run as part of the suite (STYLE.md: typing is checked as a test)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    proc = run([sys.executable, "-m", "mypy", "--strict"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    proc = run([ruff, "check", "torpor", "tests", "bench"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
