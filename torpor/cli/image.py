from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("build", help="build the default guest from Debian packages (cached)")


def run(args: argparse.Namespace) -> int:
    from torpor.guest import builder

    img = builder.build_default(report=report)
    print(img.kernel.parent)
    return 0
