"""``torpor protect NAME...`` / ``unprotect NAME...``: refuse ``delete`` (as Lima's ``limactl protect``)."""

from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from torpor.store import atomic, filenames
    from torpor.store.instance import inspect

    for name in args.names:
        marker = inspect(name).dir / filenames.PROTECTED
        if args.verb == "protect":
            atomic.write_text(marker, "delete refused until `torpor unprotect`\n")
            report(f"instance {name!r} is protected: `torpor delete` refuses it")
        else:
            marker.unlink(missing_ok=True)
            report(f"instance {name!r} is no longer protected")
    return 0
