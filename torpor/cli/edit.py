"""``torpor edit NAME``: change an instance's YAML with $EDITOR or Lima's edit flags, validated before it is
saved (Lima's ``limactl edit``).  A running instance is refused, as in Lima; a saved one keeps its saved state,
which restores with the configuration it was saved with (the change applies at the next cold boot)."""

from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    from torpor.config import edits

    p.add_argument("name", metavar="NAME")
    edits.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from torpor.config import edits
    from torpor.config.layering import load_effective
    from torpor.errors import ConfigError, InstanceStateError
    from torpor.store import atomic, filenames, lock
    from torpor.store.instance import Status, home, inspect

    inst = inspect(args.name)
    if inst.status not in (Status.STOPPED, Status.SAVED):
        raise InstanceStateError(
            f"instance {args.name!r} is {inst.status.value.lower()}; edit a stopped or saved instance",
            hint=f"`torpor stop {args.name}` first",
        )
    path = inst.dir / filenames.INSTANCE_YAML
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {args.name!r}"):
        old = path.read_text()
        new = edits.apply(old, args, str(path)) if edits.wanted(args) else _in_editor(old, path.name)
        if new == old:
            report("no changes")
            return 0
        try:
            effective = load_effective(home(), new, str(path))
        except ConfigError:
            rejected = inst.dir / filenames.REJECTED_YAML
            atomic.write_text(rejected, new)
            report(f"the edited file is kept in {rejected}; {path} is unchanged")
            raise
        atomic.write_text(path, new)
    for w in effective.warnings:
        report(f"warning: {w}")
    if inst.status is Status.SAVED:
        report(
            f"saved {path}; {args.name!r} has a saved state, which restores with the configuration it was saved "
            f"with: the change applies at the next cold boot (`torpor restart {args.name}`, or `start --cold`)"
        )
    else:
        report(f"saved {path}; the next `torpor start {args.name}` uses it")
    return 0


def _in_editor(text: str, name: str) -> str:
    """``text`` after the user's $VISUAL or $EDITOR (vi) has edited a copy of it."""
    import os
    import shlex
    import subprocess
    import tempfile

    from torpor.errors import TorporError

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="torpor-edit-") as tmp:
        copy = os.path.join(tmp, name)
        with open(copy, "w") as f:
            f.write(text)
        try:
            code = subprocess.call([*shlex.split(editor), copy])
        except OSError as e:
            raise TorporError(f"cannot run the editor {editor!r}: {e.strerror}", hint="set $EDITOR") from None
        if code != 0:
            raise TorporError(f"the editor {editor!r} exited with code {code}; nothing changed")
        with open(copy) as f:
            return f.read()
