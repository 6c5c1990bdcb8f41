"""The CLI entry point: global flags, verb dispatch, and the one place errors become messages and exit codes.

Verb modules are imported only for the verb being run, and heavy libraries only where they are used, so that
``torpor`` starts fast (a restore is only as quick as the CLI gets out of the way); a plain ``torpor start`` or
``torpor stop`` is read without argparse and logging at all (:func:`plain_args`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

# verb -> (module, one-line help); hidden verbs have no help.
VERBS: dict[str, tuple[str, str | None]] = {
    "create": ("torpor.cli.create", "create an instance from a template"),
    "start": ("torpor.cli.start", "start an instance (creating it from the default template if needed)"),
    "stop": ("torpor.cli.stop", "stop an instance (saving its state with --save or saveOnStop: true)"),
    "restart": ("torpor.cli.restart", "shut an instance down and cold boot it (never restores)"),
    "validate": ("torpor.cli.validate", "check YAML files (torpor's or Lima's) without creating anything"),
    "edit": ("torpor.cli.edit", "change a stopped or saved instance's YAML ($EDITOR, or the edit flags)"),
    "disk": ("torpor.cli.disk", "create, list, resize and delete additional disks (additionalDisks)"),
    "rename": ("torpor.cli.rename", "rename a stopped or saved instance"),
    "factory-reset": ("torpor.cli.factory_reset", "make a stopped instance new again: only its YAML kept"),
    "completion": ("torpor.cli.completion", "print a bash or zsh completion script"),
    "__complete": ("torpor.cli.completion", None),
    "protect": ("torpor.cli.protect", "refuse to delete an instance until unprotect"),
    "unprotect": ("torpor.cli.protect", "allow deleting a protected instance again"),
    "prune": ("torpor.cli.prune", "remove the image cache and the set-aside states of refused restores"),
    "generate-jsonschema": ("torpor.cli.jsonschema", "print the JSON schema of torpor's YAML (for editors)"),
    "list": ("torpor.cli.list", "list instances"),
    "delete": ("torpor.cli.delete", "delete an instance and its disk"),
    "clone": ("torpor.cli.clone", "clone a stopped or saved instance (a saved one's clone resumes its running state)"),
    "shell": ("torpor.cli.shell", "run a shell or a command in an instance (over SSH)"),
    "copy": ("torpor.cli.copy", "copy files between the host and instances (NAME:path)"),
    "show-ssh": ("torpor.cli.show_ssh", "show how to reach an instance with ssh (for other tools)"),
    "snapshot": ("torpor.cli.snapshot", "create, apply, list and delete snapshots (memory and disk together)"),
    "autostart": ("torpor.cli.autostart", "run an instance for the login session (a systemd user unit)"),
    "info": ("torpor.cli.info", "show facts about the host: QEMU, KVM or TCG and why, save mechanisms, directories"),
    "image": ("torpor.cli.image", "build a guest image (default or debian) into the cache"),
    "hostagent": ("torpor.cli.hostagent", None),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the verb named in ``argv`` gets its arguments (its module imported), for a fast start.

    Without ``argv`` every verb's arguments are added.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="torpor", description="Developer VMs on QEMU that can save their whole running state on stop."
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--tty",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="interactive terminal output (default: whether stdout is a terminal)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    wanted = set(VERBS) if argv is None else set(argv) & set(VERBS)
    for verb, (module, help_) in VERBS.items():
        kwargs = {"help": help_} if help_ else {}
        p = sub.add_parser(verb, description=help_, **kwargs)  # type: ignore[arg-type]
        p.set_defaults(module=module)
        if verb in wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = plain_args(argv) or _parse(argv)
    if args.tty is None:
        args.tty = sys.stdout.isatty()
        # Someone to answer a question: a prompt would otherwise take a pipe's next line as its answer.
        args.interactive = args.tty and sys.stdin.isatty()
    else:
        args.interactive = args.tty  # --tty: as on a terminal, answers read from stdin
    from torpor.errors import TorporError

    try:
        code: int = importlib.import_module(args.module).run(args)
        return code
    except TorporError as e:
        if args.debug:
            import logging

            logging.exception("failed")
        print(f"torpor: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"torpor: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("torpor: interrupted", file=sys.stderr)
        return 130


def _parse(argv: list[str]) -> argparse.Namespace:
    import logging

    args = build_parser(argv).parse_args(argv)
    level = logging.DEBUG if args.debug else getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return args


# The verbs whose common forms skip argparse and logging: their flags (flag -> (field, value)) and the fields'
# defaults.  A restore is timed from the command on, a stop --save against QEMU's own save.
# start's edit flags (for a new instance from a file) are unset in a plain start.
_NO_EDITS: dict[str, object] = {
    "new_name": None,
    "timeout": None,
    "cpus": None,
    "memory": None,
    "disk": None,
    "mount": [],
    "mount_type": None,
    "mount_none": False,
    "param": [],
    "set_expr": [],
}
PLAIN: dict[str, tuple[dict[str, tuple[str, object]], dict[str, object]]] = {
    "start": ({"--cold": ("cold", True)}, {"cold": False, **_NO_EDITS}),
    "stop": ({"--save": ("save", True), "--no-save": ("save", False)}, {"save": None, "force": False}),
}


def plain_args(argv: list[str]) -> SimpleNamespace | None:
    """The arguments of a plain `torpor start` or `stop`, ``[--tty | --no-tty]... VERB [FLAG] [NAME]`` with the
    verb's flags in :data:`PLAIN`, read without argparse and logging: building the parser and setting up logging
    were 17 ms of the 52 ms the CLI took before it could reach a host agent.  None for anything else (another
    verb, --help, --force, --debug, a flag given twice, an abbreviation, a mistake): the parser reads those.
    Without logging set up, the few modules on these paths that log do so below warning: nothing is shown.
    """
    rest = list(argv)
    tty = None
    while rest and rest[0] in ("--tty", "--no-tty"):
        tty = rest.pop(0) == "--tty"
    if not rest or rest[0] not in PLAIN:
        return None
    verb, args = rest[0], rest[1:]
    flags, defaults = PLAIN[verb]
    fields: dict[str, object] = {}
    names: list[str] = []
    for arg in args:
        if arg in flags and flags[arg][0] not in fields:
            field, value = flags[arg]
            fields[field] = value
        elif not arg.startswith("-") and not names and "/" not in arg and ":" not in arg and "." not in arg:
            names.append(arg)  # (a file or a template: is for the parser)
        else:
            return None
    # (stop takes several names; a plain stop one)
    named = {"names": names} if verb == "stop" else {"name": names[0] if names else "default"}
    return SimpleNamespace(
        verb=verb,
        module=VERBS[verb][0],
        **named,
        tty=tty,
        debug=False,
        log_level="warning",
        **{**defaults, **fields},
    )
