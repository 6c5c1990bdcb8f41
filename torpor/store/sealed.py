"""JSON records that carry their own digest (a saved state's manifest, a snapshot's record).

Written atomically, last, so that a record that exists and verifies marks something complete; one whose digest
does not match was damaged after it was written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torpor.store import atomic


def digest(record: dict[str, Any], key: str) -> str:
    """The digest of ``record`` without its ``key`` field (where the digest itself is kept)."""
    body = {k: v for k, v in record.items() if k != key}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write(path: Path, record: dict[str, Any], key: str) -> None:
    """Write ``record`` with its digest in ``key``, atomically, readable by the user only."""
    sealed = dict(record)
    sealed[key] = digest(sealed, key)
    atomic.write_text(path, json.dumps(sealed, indent=2, sort_keys=True) + "\n", 0o600)


def verifies(record: Any, key: str) -> bool:
    """Whether ``record`` (as parsed from JSON) is an object whose ``key`` holds its digest."""
    return isinstance(record, dict) and record.get(key) == digest(record, key)
