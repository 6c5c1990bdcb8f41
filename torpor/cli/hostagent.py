"""``torpor hostagent NAME`` (hidden): run an instance's host agent in the foreground.

``torpor start`` spawns it detached; a service manager (systemd) can run it directly.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")


def run(args: argparse.Namespace) -> int:
    from torpor.hostagent.launch import run as run_agent
    from torpor.store.instance import inspect

    inspect(args.name)  # a clear error for an instance that does not exist
    return run_agent(args.name)
