from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="only these instances")
    p.add_argument("--format", choices=["table", "json", "yaml"], default="table", help="json: one object per line")
    p.add_argument("-q", "--quiet", action="store_true", help="only the names")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.listing import describe_all

    if args.quiet:
        from torpor.store.instance import home, list_names

        for name in args.names or list_names(home()):
            print(name)
        return 0
    rows = describe_all(args.names or None)
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    if args.format == "yaml":
        import yaml

        print(yaml.safe_dump_all(rows, sort_keys=False), end="")
        return 0
    if not rows:
        print("no instances; `torpor start` creates and starts one", file=sys.stderr)
        return 0
    from torpor.config.schema import format_size

    header = ("NAME", "STATUS", "CPUS", "MEMORY", "DISK", "DIR")
    table = [header] + [
        (
            r["name"],
            r["status"],
            str(r.get("cpus", "?")),
            format_size(r["memory"]) if "memory" in r else "?",
            format_size(r["disk"]) if "disk" in r else "?",
            r["dir"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r.get("reason"):
            print(f"{r['name']}: {r['status'].lower()}: {r['reason']}", file=sys.stderr)
        if aside := r.get("setAside"):
            print(
                f"{r['name']}: {aside['count']} saved state(s) set aside by refused restores, "
                f"{format_size(aside['bytes'])}; `torpor prune` removes them",
                file=sys.stderr,
            )
    return 0
