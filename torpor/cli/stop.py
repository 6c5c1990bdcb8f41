from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help="instance name (default: default)")
    p.add_argument("-f", "--force", action="store_true", help="kill the VM at once instead of shutting it down")


def run(args: argparse.Namespace) -> int:
    from torpor.instance import stop

    if args.force:
        stop.force_stop(args.name, report)
        report(f"instance {args.name!r} forced off")
        return 0
    ev = stop.stop(args.name, report)
    report(f"instance {args.name!r} stopped: {ev.message}")
    return 0
