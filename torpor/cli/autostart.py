from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["enable", "disable"])
    p.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from torpor.instance import autostart

    if args.action == "enable":
        print(autostart.enable(args.name, report))
    else:
        autostart.disable(args.name, report)
    return 0
