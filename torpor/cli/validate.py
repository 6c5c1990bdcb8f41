"""``torpor validate FILE...``: read templates as `create` would (base templates, Lima's fields, the layers of
$TORPOR_HOME/_config) and say what is wrong, without creating anything (Lima's ``limactl validate``)."""

from __future__ import annotations

import argparse
import re

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="a YAML file, or template:NAME")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for spec in args.files:
        problems, warnings = check(spec)
        for w in warnings:
            report(f"{spec}: warning: {w}")
        if problems:
            failed += 1
            report(f"{spec}: invalid")
            for p in problems:
                report(f"  - {p}")
        else:
            print(f"{spec}: ok")
    return 1 if failed else 0


def check(spec: str) -> tuple[list[str], list[str]]:
    """The problems and the warnings of template ``spec``; every problem at once, a missing base's included."""
    from torpor.config.layering import load_effective, load_template
    from torpor.errors import ConfigError
    from torpor.store.instance import home, instance_dir

    root = home()
    problems: list[str] = []
    try:
        text, name = load_template(spec, problems)
        name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "instance"
        effective = load_effective(root, text, spec, instance=(name, instance_dir(name, root)))
    except ConfigError as e:
        found = e.problems or [e.message + (f" ({e.hint})" if e.hint else "")]
        if problems:  # a base left out: the images it would have given are not missing from the template
            found = [p for p in found if not p.startswith("images:")]
        return problems + found, []
    return problems, effective.warnings
