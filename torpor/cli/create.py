from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="instance name (default: from the template's file name)")
    p.add_argument(
        "template",
        nargs="?",
        default="template:default",
        help="a YAML file, or template:NAME (default: template:default)",
    )


def run(args: argparse.Namespace) -> int:
    from torpor.instance.create import create

    name, warnings = create(args.template, args.name)
    for w in warnings:
        report(f"warning: {w}")
    report(f"created instance {name!r}; `torpor start {name}` starts it")
    return 0
