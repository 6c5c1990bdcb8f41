from __future__ import annotations

from torpor.cli.common import Progress, asker, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help="instance name (default: default)")
    p.add_argument("--cold", action="store_true", help="discard a saved state and boot afresh")


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    """``args`` from the parser, or for a plain start from main.plain_args."""
    from torpor.instance.start import start

    bar = Progress(args.tty)
    # With no one to answer, the agent restores and says what changed.
    ready = start(args.name, bar.report, args.tty, cold=args.cold, ask=asker(args), progress=bar.line)
    bar.end()
    if message := ready.fields.get("startMessage"):
        report(str(message).rstrip("\n"))
    if ready.fields.get("degraded"):
        report(f"torpor: error: instance {args.name!r} is running but degraded: provisioning failed (see above)")
        return 2
    return 0
