"""Create an instance directory from a template, validating the configuration before anything is written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from torpor.config.layering import load_effective, load_template
from torpor.errors import InstanceExists, TorporError
from torpor.store import atomic, filenames
from torpor.store.instance import home, instance_dir, validate_name

DEFAULT_TEMPLATE = "template:default"


def create(
    template: str = DEFAULT_TEMPLATE,
    name: str | None = None,
    root: Path | None = None,
    edit: Callable[[str], str] | None = None,
) -> tuple[str, list[str]]:
    """Create the instance (its YAML changed by ``edit`` first, the edit flags); return its name and the
    configuration warnings."""
    root = root or home()
    text, suggested = load_template(template)
    if edit is not None:
        text = edit(text)
    name = validate_name(name or suggested)
    d = instance_dir(name, root)
    if d.exists():
        raise InstanceExists(f"instance {name!r} already exists", hint=f"use `torpor start {name}`, or another --name")
    effective = load_effective(root, text, template, instance=(name, d))
    root.mkdir(parents=True, exist_ok=True)
    # Build the directory under a temporary name and rename it into place: a failure leaves no half instance.
    tmp = root / f".{name}.creating.{os.getpid()}"
    try:
        tmp.mkdir()
        atomic.write_text(tmp / filenames.INSTANCE_YAML, text)
        tmp.rename(d)
    except OSError as e:
        if d.exists():
            raise InstanceExists(f"instance {name!r} already exists") from None
        raise TorporError(f"cannot create {d}: {e.strerror}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic.fsync_dir(root)
    return name, effective.warnings
