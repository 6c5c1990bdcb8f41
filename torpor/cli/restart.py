from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help="instance name (default: default)")


def run(args: argparse.Namespace) -> int:
    """Shut down (never save) and cold boot: the way to apply configuration changes to a saved instance."""
    from torpor.instance import start, stop
    from torpor.store.instance import Status, inspect

    if inspect(args.name).status is Status.RUNNING:
        stop.stop(args.name, report, save=False)
    ready = start.start(args.name, report, args.tty, cold=True)
    return 2 if ready.fields.get("degraded") else 0
