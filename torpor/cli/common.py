"""Small helpers shared by the verbs."""

from __future__ import annotations

import sys


def report(message: str) -> None:
    """Progress for people, on stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)
