from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    from torpor.config import edits

    p.add_argument("--name", help="instance name (default: from the template's file name)")
    p.add_argument(
        "template",
        nargs="?",
        default="template:default",
        help="a YAML file (torpor's or Lima's), or template:NAME (default: template:default)",
    )
    edits.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from torpor.config import edits
    from torpor.instance.create import create

    name, warnings = create(args.template, args.name, edit=lambda text: edits.apply(text, args, args.template))
    for w in warnings:
        report(f"warning: {w}")
    report(f"created instance {name!r}; `torpor start {name}` starts it")
    return 0
