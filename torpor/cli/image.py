from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build a guest image from Debian packages (cached)")
    b.add_argument(
        "guest",
        nargs="?",
        choices=["default", "debian", "docker"],
        default="default",
        help="default: torpor's small guest (seconds); debian: Debian 12 with systemd and cloud-init (minutes); "
        "docker: debian with Docker",
    )


def run(args: argparse.Namespace) -> int:
    if args.guest in ("debian", "docker"):
        from torpor.guest import debian

        recipe = debian.DOCKER if args.guest == "docker" else debian.DEBIAN
        print(debian.build(report=report, recipe=recipe).disk.parent)
        return 0
    from torpor.guest import builder

    img = builder.build_default(report=report)
    print(img.kernel.parent)
    return 0
