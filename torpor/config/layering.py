"""Configuration layering, written once for every field:

    built-in defaults (the schema) < $TORPOR_HOME/_config/default.yaml < the instance file < _config/override.yaml

Mappings merge key by key, scalars from the higher layer win, lists from the higher layer replace the lower
layer's, except the lists in ``APPEND_LISTS``, which combine with the higher layer's entries first (as in Lima),
and ``mounts``, which combine too, an entry for the same mount point as a lower layer's merging into it (as in
Lima).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from torpor.config import sources
from torpor.config.schema import NOT_YET_IMPLEMENTED, Config, expand_host_path
from torpor.errors import ConfigError

APPEND_LISTS = frozenset({"portForwards", "provision"})


@dataclass(frozen=True)
class Effective:
    config: Config
    warnings: list[str]
    sources: str  # the fingerprint of the files it was read from (sources.fingerprint)

    def digest(self) -> str:
        """A stable hash of the effective configuration (what a saved state is checked against)."""
        data = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
        return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse one YAML layer; an empty document is an empty mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f":{mark.line + 1}:{mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}", hint="fix the file and try again") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def merge(low: Any, high: Any, key: str = "") -> Any:
    """Merge two layers; ``high`` wins.  A ``null`` in ``high`` leaves ``low`` in place."""
    if high is None:
        return low
    if isinstance(low, dict) and isinstance(high, dict):
        out = dict(low)
        for k, v in high.items():
            out[k] = merge(low.get(k), v, k)
        return out
    if key in APPEND_LISTS and isinstance(low, list) and isinstance(high, list):
        return high + low
    if key == "mounts" and isinstance(low, list) and isinstance(high, list):
        return merge_mounts(low, high)
    return high


def merge_mounts(low: list[Any], high: list[Any]) -> list[Any]:
    """The lower layer's mounts, then the higher's; an entry for a mount point already there merges into it."""
    out: list[Any] = []
    at: dict[str, int] = {}
    for m in [*low, *high]:
        if not isinstance(m, dict):
            out.append(m)  # validation reports it
            continue
        point = m.get("mountPoint") or m.get("location")
        key = expand_host_path(point) if isinstance(point, str) else None
        if key is not None and key in at:
            out[at[key]] = merge(out[at[key]], m)
        else:
            if key is not None:
                at[key] = len(out)
            out.append(m)
    return out


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problem(err: Any) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-"))))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (torpor does not support it; remove it)"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    return f"{_path(loc)}: {msg}"


def validate(data: dict[str, Any], source: str) -> Config:
    """Validate merged layers, reporting every problem at once, each with its field path."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = [_problem(err) for err in e.errors()]
        raise ConfigError(f"{source}: invalid configuration", problems, hint="fix the fields listed above") from None


def load_effective(home: Path, instance_text: str, source: str) -> Effective:
    """The effective configuration of an instance whose YAML is ``instance_text`` (named ``source`` in errors)."""
    layers = sources.read_layers(home, instance_text, source)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, parse_yaml(layer.text, layer.source))
    names = " < ".join(layer.source for layer in layers)
    config = validate(merged, source if len(layers) == 1 else f"{source} (layered: {names})")
    warnings = [
        f"`{field}` is accepted but not implemented yet in this torpor version; it has no effect"
        for field in NOT_YET_IMPLEMENTED
        if merged.get(field)
    ]
    return Effective(config, warnings, sources.fingerprint(layers))


def template_names() -> list[str]:
    pkg = resources.files("torpor.config") / "templates"
    return sorted(p.name.removesuffix(".yaml") for p in pkg.iterdir() if p.name.endswith(".yaml"))


def load_template_text(spec: str) -> tuple[str, str]:
    """Read a template given as ``template:NAME`` or a path; return its text and the instance name it suggests."""
    if spec.startswith("template:") or spec.startswith("template://"):
        name = spec.split(":", 1)[1].lstrip("/")
        if name not in template_names():
            raise ConfigError(f"no template named {name!r}", hint=f"available templates: {', '.join(template_names())}")
        text = (resources.files("torpor.config") / "templates" / f"{name}.yaml").read_text()
        return text, name
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {spec}: {e.strerror}", hint="give a YAML file or template:default") from None
    return text, path.name.removesuffix(".yaml").removesuffix(".yml")
