from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--format",
        choices=["config", "cmd"],
        default="config",
        help="config: an ssh_config block; cmd: an ssh command line",
    )


def run(args: argparse.Namespace) -> int:
    import shlex

    from torpor.instance.access import ssh_command, ssh_config_path

    if args.format == "cmd":
        print(shlex.join(ssh_command(args.name, tty=False, script="")))
    else:
        print(ssh_config_path(args.name).read_text(), end="")
    return 0
