from __future__ import annotations

import argparse
import subprocess


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories recursively")
    p.add_argument("paths", nargs="+", metavar="PATH", help="SRC... DST; guest paths are NAME:path")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.access import scp_command

    argv = scp_command(args.paths, recursive=args.recursive)
    return subprocess.run(argv, check=False).returncode
