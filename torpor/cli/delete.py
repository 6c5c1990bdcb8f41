from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true", help="delete even if running (kills it)")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.delete import delete

    for name in args.names:
        delete(name, args.force, report)
        report(f"deleted instance {name!r}")
    return 0
