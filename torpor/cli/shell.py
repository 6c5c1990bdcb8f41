from __future__ import annotations

import argparse
import os
import shlex
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--workdir",
        help="directory to run in (default: the host's current directory where it is mounted in the guest, "
        "else the user's home in the guest)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="command to run (default: a login shell)")


def run(args: argparse.Namespace) -> int:
    from torpor.instance.access import guest_dir_for, running_mounts, ssh_command

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    script = shlex.join(command) if command else ""
    workdir = args.workdir
    if not workdir:
        try:
            here = os.getcwd()
        except OSError:  # removed under us
            here = ""
        mounts = running_mounts(args.name)
        workdir = guest_dir_for(mounts, here) if here else None
        if workdir is None and mounts:
            print(
                f"torpor: {here or 'the current directory'} is not mounted in {args.name}; in the guest home",
                file=sys.stderr,
            )
    if workdir:
        script = f"cd {shlex.quote(workdir)} && " + (script or 'exec "$SHELL" -l')
    argv = ssh_command(args.name, tty=sys.stdin.isatty() and sys.stdout.isatty(), script=script)
    sys.stdout.flush()
    sys.stderr.flush()
    from torpor import subp

    subp.replace(argv)  # the guest command's exit code is ours, signals reach ssh directly
