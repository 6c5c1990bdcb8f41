"""A second QEMU beside the installed one: Debian 12's own QEMU 7.2, unpacked from its packages into the cache.

setup.sh installs QEMU 10 from bookworm-backports; torpor must keep working with the stock 7.2 (no mapped-ram,
so it saves a migration stream).  The packages are fetched with `apt-get download` (the package registry is
reachable where nothing else is) and unpacked, not installed.  An unpacked QEMU needs ``-L`` for its firmware and
``QEMU_MODULE_DIR`` so that it does not load the installed version's modules: a small wrapper script provides
both, and torpor runs it through ``$TORPOR_QEMU``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SUITE = "bookworm/main"
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")


def _suite_version(package: str) -> str:
    out = subprocess.run(["apt-cache", "madison", package], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and f" {SUITE} " in f" {fields[2]} ":
            return fields[1]
    raise AssertionError(f"apt knows no {package} in {SUITE}: {out}")


def debian12_qemu(cache: Path) -> Path:
    """The wrapper that runs Debian 12's QEMU; unpacked into ``cache`` on first use."""
    if not Path("/etc/debian_version").read_text().startswith("12"):
        pytest.skip("the side-by-side QEMU 7.2 comes from Debian 12 packages")
    versions = {p: _suite_version(p) for p in PACKAGES}
    root = cache / "qemu" / versions["qemu-system-x86"].replace(":", "_")
    wrapper = root / "qemu-system-x86_64"
    if wrapper.exists():
        return wrapper
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            ["apt-get", "download", "-q", *(f"{p}={v}" for p, v in versions.items())],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        unpacked = Path(tmp) / "root"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        (unpacked / "qemu-system-x86_64").write_text(
            "#!/bin/sh\n"
            f'R="{root}"\n'
            'export QEMU_MODULE_DIR="$R/usr/lib/x86_64-linux-gnu/qemu"\n'
            'exec "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/seabios" -L "$R/usr/share/qemu" "$@"\n'
        )
        (unpacked / "qemu-system-x86_64").chmod(0o755)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)
    return wrapper
