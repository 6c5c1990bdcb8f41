from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="a stopped or saved instance")
    p.add_argument("target", metavar="DST", help="the new instance's name")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.clone import clone
    from torpor.store import filenames

    src, dst = args.source, args.target
    if (clone(src, dst, report) / filenames.SAVED_DIR).exists():
        report(f"cloned {src!r} to {dst!r} with its saved state; `torpor start {dst}` resumes it")
    else:
        report(f"cloned {src!r} to {dst!r}; `torpor start {dst}` boots it")
    return 0
