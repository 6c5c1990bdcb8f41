"""``torpor disk create|list|resize|delete``: additional disks for ``additionalDisks`` (Lima's ``limactl disk``)."""

from __future__ import annotations

import argparse
import json

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a disk (qcow2, grows as it is written)")
    create.add_argument("disk_name", metavar="NAME")
    create.add_argument("--size", required=True, help="its size, such as 10GiB")
    lst = sub.add_parser("list", help="the disks, their sizes and the instances using them")
    lst.add_argument("--format", choices=["table", "json"], default="table")
    resize = sub.add_parser("resize", help="grow a disk no instance uses (never shrinks)")
    resize.add_argument("disk_name", metavar="NAME")
    resize.add_argument("--size", required=True)
    delete = sub.add_parser("delete", help="delete disks no instance uses")
    delete.add_argument("disk_names", nargs="+", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from torpor.config.schema import format_size, parse_size
    from torpor.errors import TorporError
    from torpor.store import disks
    from torpor.store.instance import home

    root = home()

    def size() -> int:
        try:
            return parse_size(args.size)
        except ValueError as e:
            raise TorporError(f"--size: {e}") from None

    if args.action == "create":
        path = disks.create(root, args.disk_name, size())
        report(f"created disk {args.disk_name!r} ({format_size(size())}) in {path}")
        report(
            f"give it to an instance with `additionalDisks: [{args.disk_name}]`: it is at /mnt/lima-{args.disk_name}"
        )
    elif args.action == "list":
        rows = disks.listing(root)
        if args.format == "json":
            for d in rows:
                print(json.dumps({"name": d.name, "size": d.size, "path": str(d.path), "usedBy": list(d.used_by)}))
            return 0
        table = [("NAME", "SIZE", "IN USE BY", "PATH")]
        table += [(d.name, format_size(d.size), ",".join(d.used_by) or "-", str(d.path)) for d in rows]
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    elif args.action == "resize":
        was = disks.resize(root, args.disk_name, size())
        report(
            f"disk {args.disk_name!r} grown from {format_size(was)} to {format_size(size())}; "
            "grow its filesystem in the guest (resize2fs)"
        )
    else:
        for name in args.disk_names:
            disks.delete(root, name)
            report(f"deleted disk {name!r}")
    return 0
