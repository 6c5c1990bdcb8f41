from __future__ import annotations

import argparse
import json
import sys
import time

from torpor.cli.common import Progress, asker, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="snapshot memory and disk of a running instance, or the disk of a stopped one")
    a = sub.add_parser("apply", help="return the instance to a snapshot (replaces its current state)")
    ls = sub.add_parser("list", help="list an instance's snapshots")
    d = sub.add_parser("delete", help="delete a snapshot")
    for q in (c, a, ls, d):
        q.add_argument("name", metavar="NAME")
    for q in (c, a, d):
        q.add_argument("--tag", required=True, help="the snapshot's name")
    a.add_argument("--force", action="store_true", help="do not ask before replacing the current state")
    ls.add_argument("--format", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    from torpor.instance import snapshot

    if args.action == "create":
        _create(args)
    elif args.action == "apply":
        _apply(args)
    elif args.action == "list":
        _list(args)
    else:
        snapshot.delete(args.name, args.tag, report)
    return 0


def _create(args: argparse.Namespace) -> None:
    from torpor.instance import snapshot

    meta = snapshot.create(args.name, args.tag, report)
    if "pausedSeconds" in meta:
        size = (meta.get("state") or {}).get("allocated", 0) + (meta.get("ram") or {}).get("allocated", 0)
        report(
            f"snapshot {args.tag!r} taken: memory and disk, {size / 2**20:.0f} MiB, "
            f"VM paused {meta['pausedSeconds']:.2f} s"
        )


def _apply(args: argparse.Namespace) -> None:
    from torpor.instance import snapshot
    from torpor.instance.start import start

    bar = Progress(args.tty)

    def confirm(what: str) -> bool:
        if args.force:
            return True
        ask = asker(args)
        if ask is None:
            report(f"torpor: {what}; pass --force to apply it without a terminal to ask on")
            return False
        return ask(f"{what}. Apply? [y/N] ").strip().lower() in ("y", "yes")

    runs = snapshot.apply(
        args.name,
        args.tag,
        report,
        confirm=confirm,
        start=lambda: start(args.name, bar.report, False, progress=bar.line),
    )
    bar.end()
    if runs:
        report(f"instance {args.name!r} is at snapshot {args.tag!r}")


def _list(args: argparse.Namespace) -> None:
    from torpor.instance import snapshot

    rows, broken = snapshot.list_snapshots(args.name)
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{'TAG':<20}{'CREATED':<21}{'MEMORY':<8}{'SIZE':>10}")
        for row in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["createdAt"]))
            size = f"{row['size'] / 2**20:.0f} MiB" if row["memory"] else "-"
            print(f"{row['tag']:<20}{created:<21}{'yes' if row['memory'] else 'no':<8}{size:>10}")
    for tag in broken:
        print(
            f"torpor: snapshot {tag!r} is incomplete or damaged; `torpor snapshot delete {args.name} "
            f"--tag {tag}` removes it",
            file=sys.stderr,
        )
