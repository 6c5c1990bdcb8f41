from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.rename import rename

    rename(args.old, args.new)
    report(f"renamed {args.old!r} to {args.new!r}; its guest's hostname follows at the next cold boot")
    return 0
