from __future__ import annotations

from torpor.cli.common import Progress, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="instance names (default: default)")
    p.add_argument("-f", "--force", action="store_true", help="kill the VM at once (never saves)")
    save = p.add_mutually_exclusive_group()
    save.add_argument(
        "--save",
        dest="save",
        action="store_const",
        const=True,
        default=None,
        help="save the running state this time (the next start restores it)",
    )
    save.add_argument(
        "--no-save",
        dest="save",
        action="store_const",
        const=False,
        help="shut down this time, even with saveOnStop: true",
    )


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    """``args`` from the parser, or for a plain stop from main.plain_args (one name)."""
    names = args.names or ["default"]
    code = 0
    for name in names:
        args.name = name
        code = max(code, _stop_one(args))
    return code


def _stop_one(args: argparse.Namespace | SimpleNamespace) -> int:
    from torpor.instance import stop

    if args.force and args.save:
        from torpor.errors import TorporError

        raise TorporError(
            "--save and --force cannot be combined: a forced stop kills the VM without saving",
            hint=f"use `torpor stop --save {args.name}`",
        )
    if args.force:
        stop.force_stop(args.name, report)
        report(f"instance {args.name!r} forced off")
        return 0
    bar = Progress(args.tty)
    ev = stop.stop(args.name, bar.report, save=args.save, progress=bar.line)
    bar.end()
    line = f"instance {args.name!r} stopped: {ev.message}"
    if ev.fields.get("saveFailed"):  # (the reason was on an earlier line; the last one must not read as success)
        line += "; the VM state was NOT saved (the next start cold boots)"
    report(line)
    # Stopped either way, but not as asked (a save that failed) or not cleanly (the agent failed): scripts must see.
    return 1 if ev.fields.get("saveFailed") or ev.fields.get("ok") is False else 0
