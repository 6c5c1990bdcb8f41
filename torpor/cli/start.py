from __future__ import annotations

from torpor.cli.common import Progress, asker, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace


def add_arguments(p: argparse.ArgumentParser) -> None:
    from torpor.config import edits

    p.add_argument(
        "name",
        nargs="?",
        default="default",
        help="instance name (default: default), or a YAML file or template:NAME to create an instance from",
    )
    p.add_argument("--cold", action="store_true", help="discard a saved state and boot afresh")
    p.add_argument("--name", dest="new_name", metavar="NAME", help="with a file or template: the instance's name")
    p.add_argument("--timeout", type=duration, help="how long to wait for ready, such as 90s or 10m (Lima's)")
    edits.add_arguments(p)


# (torpor.config.edits.FIELDS, not imported for a plain start)
EDIT_FIELDS = ("cpus", "memory", "disk", "mount", "mount_type", "mount_none", "param", "set_expr")


def duration(text: str) -> float:
    """A duration as Lima's --timeout takes it: 90s, 10m, 1h30m, or seconds."""
    import argparse
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


def is_template(arg: str) -> bool:
    """Whether start's argument names a template (a file or template:NAME) rather than an instance."""
    return arg.startswith("template:") or "/" in arg or arg.endswith((".yaml", ".yml"))


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    """``args`` from the parser, or for a plain start from main.plain_args."""
    from torpor.instance.start import start

    if is_template(args.name) or getattr(args, "new_name", None):
        args.name = _create(args)
    elif any(getattr(args, f, None) not in (None, False, []) for f in EDIT_FIELDS):
        from torpor.errors import TorporError

        raise TorporError(
            f"edit flags are for a new instance; {args.name!r} is an instance name",
            hint=f"change an instance with `torpor edit {args.name} ...`, then start it",
        )
    bar = Progress(args.tty)
    # With no one to answer, the agent restores and says what changed.
    wait = getattr(args, "timeout", None)
    ready = start(args.name, bar.report, args.tty, cold=args.cold, ask=asker(args), progress=bar.line, wait=wait)
    bar.end()
    if message := ready.fields.get("startMessage"):
        report(str(message).rstrip("\n"))
    if ready.fields.get("degraded"):
        report(f"torpor: error: instance {args.name!r} is running but degraded: provisioning failed (see above)")
        return 2
    return 0


def _create(args: argparse.Namespace | SimpleNamespace) -> str:
    """Create the instance `start FILE` names (Lima's `limactl start FILE.yaml`); its name."""
    from torpor.config import edits
    from torpor.instance.create import create

    template = args.name if is_template(args.name) else "template:default"
    name, warnings = create(template, args.new_name, edit=lambda text: edits.apply(text, args, template))
    for w in warnings:
        report(f"warning: {w}")
    report(f"created instance {name!r} from {template}")
    return name
