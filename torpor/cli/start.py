from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help="instance name (default: default)")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.start import start

    start(args.name, report, args.tty)
    return 0
