"""Where torpor keeps what it builds and learns once per host: images, probes, QEMU versions."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TORPOR_CACHE``, else the XDG cache directory's ``torpor``."""
    if env := os.environ.get("TORPOR_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torpor"
