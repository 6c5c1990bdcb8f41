from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories recursively")
    p.add_argument("paths", nargs="+", metavar="PATH", help="SRC... DST; guest paths are NAME:path")


def run(args: argparse.Namespace) -> int:
    from torpor import subp
    from torpor.instance.access import scp_command

    return subp.interactive(scp_command(args.paths, recursive=args.recursive))
