"""``torpor factory-reset NAME``: a stopped instance made new, as Lima's ``limactl factory-reset``: everything but
its YAML goes (disk, saved state, snapshots, seed, instance-id, logs), so the next start is a first boot."""

from __future__ import annotations

import argparse

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    import shutil

    from torpor.errors import InstanceStateError
    from torpor.store import filenames, lock
    from torpor.store.instance import Status, inspect

    inst = inspect(args.name)
    with lock.exclusive(inst.dir / filenames.LOCK, f"instance {args.name!r}"):
        inst = inspect(args.name)
        if inst.status not in (Status.STOPPED, Status.SAVED):
            raise InstanceStateError(
                f"instance {args.name!r} is {inst.status.value.lower()}", hint=f"`torpor stop {args.name}` first"
            )
        if (inst.dir / filenames.PROTECTED).exists():
            raise InstanceStateError(
                f"instance {args.name!r} is protected", hint=f"`torpor unprotect {args.name}` first"
            )
        keep = {filenames.INSTANCE_YAML, filenames.LOCK, filenames.PROTECTED}
        for path in inst.dir.iterdir():
            if path.name in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    report(f"instance {args.name!r} reset: only its {filenames.INSTANCE_YAML} is left; the next start is a first boot")
    return 0
