"""The configuration's source files, read and fingerprinted without parsing them.

An instance's effective configuration is made of up to three files (see ``torpor.config.layering``).  A cold boot
records their fingerprint; a restore compares it with the files as they are now, and only if they differ does it
load pydantic and validate them: importing the schema alone takes 0.10-0.12 s of CPU here, which competed with
the restored guest's SSH handshake for the 2 cores (a restore's `torpor start`, 16 interleaved pairs: median
0.46 s without it against 0.49 s with it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import torpor
from torpor.errors import ConfigError
from torpor.store import filenames


class Layer(NamedTuple):
    role: str  # "default", "instance" or "override"
    text: str
    source: str  # the file's name in messages


def layer_files(home: Path) -> tuple[Path, Path]:
    """$TORPOR_HOME/_config/default.yaml (below every instance file) and override.yaml (above them)."""
    cfg = home / filenames.CONFIG_DIR
    return cfg / filenames.DEFAULT_YAML, cfg / filenames.OVERRIDE_YAML


def read_text(path: Path) -> str:
    """A configuration file's text; a ConfigError naming the file if it cannot be read or is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {e.start} is not valid UTF-8)", hint="save it as UTF-8"
        ) from None


def read_layers(home: Path, instance_text: str, source: str) -> list[Layer]:
    """The layers that exist, lowest first; the instance's own text is given (it may not be in a file yet)."""
    default_file, override_file = layer_files(home)
    layers = []
    if default_file.exists():
        layers.append(Layer("default", read_text(default_file), str(default_file)))
    layers.append(Layer("instance", instance_text, source))
    if override_file.exists():
        layers.append(Layer("override", read_text(override_file), str(override_file)))
    return layers


def fingerprint(layers: list[Layer]) -> str:
    """A hash of the layers' texts and of the torpor version that reads them (its schema's defaults count too)."""
    h = hashlib.sha256(f"torpor {torpor.__version__}\n".encode())
    for layer in layers:
        data = layer.text.encode()
        h.update(f"{layer.role} {len(data)}\n".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def unchanged_since(recorded: str | None, home: Path, inst_dir: Path) -> bool:
    """Whether an instance's configuration files are as they were when ``recorded`` (a boot's fingerprint) was
    taken; never when either is unknown (a state saved before fingerprints, a file that cannot be read)."""
    return recorded is not None and current_fingerprint(home, inst_dir) == recorded


def current_fingerprint(home: Path, inst_dir: Path) -> str | None:
    """The fingerprint of an instance's configuration files as they are now; None if one cannot be read."""
    try:
        text = read_text(inst_dir / filenames.INSTANCE_YAML)
        return fingerprint(read_layers(home, text, str(inst_dir / filenames.INSTANCE_YAML)))
    except ConfigError:
        return None
