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

from torpor.config import lima, sources
from torpor.config.gotemplate import TemplateError, expand
from torpor.config.schema import Config, expand_host_path, known_fields
from torpor.errors import ConfigError
from torpor.store import filenames

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
    return dict(lima.strip_nulls(data))


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
        import difflib

        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, [*known_fields(), *lima.field_names()], n=1, cutoff=0.75)
        msg = f"unknown field; did you mean {close[0]!r}?" if close else "unknown field (not a torpor or Lima field)"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    return f"{_path(loc)}: {msg}"


def validate(data: dict[str, Any], source: str, problems: list[str] | None = None) -> Config:
    """Validate merged layers, reporting every problem at once (``problems`` found before too), each with its
    field path."""
    found = list(problems or [])
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        found += [_problem(err) for err in e.errors()]
    if found:
        raise ConfigError(f"{source}: invalid configuration", found, hint="fix the fields listed above")
    return config


def load_effective(home: Path, instance_text: str, source: str, instance: tuple[str, Path] | None = None) -> Effective:
    """The effective configuration of an instance whose YAML is ``instance_text`` (named ``source`` in errors).

    ``instance`` is the instance's name and directory (what ``{{.Name}}`` and ``{{.Dir}}`` expand to); by default
    read from ``source`` when that is an instance's file.
    """
    layers = sources.read_layers(home, instance_text, source)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, parse_yaml(layer.text, layer.source))
    names = " < ".join(layer.source for layer in layers)
    data, reading = lima.normalize(merged)
    if instance is None:
        path = Path(source)
        name = path.parent.name if path.name == filenames.INSTANCE_YAML else path.name.split(".")[0]
        instance = (name, path.parent if path.name == filenames.INSTANCE_YAML else home / name)
    reading.problems += expand_templates(data, *instance)
    config = validate(data, source if len(layers) == 1 else f"{source} (layered: {names})", reading.problems)
    return Effective(config, reading.warnings, sources.fingerprint(layers))


# The fields Lima expands as templates: with the host's variables, or with the guest's.
HOST_TEMPLATES = (("mounts", "location"), ("portForwards", "hostSocket"), ("copyToHost", "host"), ("message",))
GUEST_TEMPLATES = (
    ("provision", "script"),
    ("provision", "content"),
    ("provision", "path"),
    ("provision", "owner"),
    ("provision", "expression"),
    ("probes", "script"),
    ("probes", "description"),
    ("probes", "hint"),
    ("portForwards", "guestSocket"),
    ("mounts", "mountPoint"),
    ("copyToHost", "guest"),
)


def expand_templates(data: dict[str, Any], name: str, inst_dir: Path) -> list[str]:
    """Expand Lima's template variables in ``data`` in place; the problems found (each naming its field)."""
    from torpor.config.guestuser import GuestUser

    param = {k: str(v) for k, v in data.get("param", {}).items()} if isinstance(data.get("param"), dict) else {}
    user_fields = data.get("user")
    user = GuestUser.of(user_fields if isinstance(user_fields, dict) else {})
    host = lima.host_variables(name, inst_dir, param)
    guest = lima.guest_variables(
        name, hostname=f"torpor-{name}", user=user.name, uid=user.uid, home=user.home, param=param
    )
    problems: list[str] = []
    for fields, variables in ((HOST_TEMPLATES, host), (GUEST_TEMPLATES, guest)):
        for path in fields:
            for where, container, key in _places(data, path):
                value = container[key]
                if isinstance(value, str) and "{{" in value:
                    try:
                        container[key] = expand(value, variables)
                    except TemplateError as e:
                        problems.append(f"{where}: {e}")
    return problems


def _places(data: dict[str, Any], path: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(field path, container, key) of ``path`` in ``data``: a top-level field, or one of a list's entries'."""
    top = path[0]
    if len(path) == 1:
        return [(top, data, top)] if top in data else []
    items = data.get(top)
    if not isinstance(items, list):
        return []
    return [
        (f"{top}[{i}].{path[1]}", it, path[1]) for i, it in enumerate(items) if isinstance(it, dict) and path[1] in it
    ]


def embed(text: str, source: str, relative_to: Path | None, problems: list[str] | None = None) -> str:
    """The instance file's text for a template: the template as written, or, when it has ``base`` templates or
    ``file:`` scripts (which name files relative to the template), with those merged in, as ``limactl create``
    embeds them (the result is YAML without the template's comments).  A base that cannot be read is an error,
    or with ``problems`` given, one of them."""
    data = parse_yaml(text, source)
    if "base" not in data and not any(
        isinstance(e, dict) and "file" in e for k in ("provision", "probes") for e in data.get(k) or []
    ):
        return text
    data = lima.embed_bases(data, relative_to, parse_yaml, problems=problems)
    lima.embed_files(data, relative_to)
    header = f"# Made from {source} by torpor, with its base templates and script files embedded.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def template_names() -> list[str]:
    pkg = resources.files("torpor.config") / "templates"
    return sorted(p.name.removesuffix(".yaml") for p in pkg.iterdir() if p.name.endswith(".yaml"))


def load_template(spec: str, problems: list[str] | None = None) -> tuple[str, str]:
    """A template given as ``template:NAME`` or a path, ready to be an instance's file (:func:`embed`), and the
    instance name it suggests."""
    text, name = load_template_text(spec)
    builtin = spec.startswith("template:")
    return embed(text, spec, None if builtin else Path(spec).resolve().parent, problems), name


# Lima's template names for a guest torpor has under its own name.
LIMA_TEMPLATE_NAMES = {"debian-12": "debian"}


def load_template_text(spec: str) -> tuple[str, str]:
    """Read a template given as ``template:NAME`` or a path; return its text and the instance name it suggests."""
    if spec.startswith("template:") or spec.startswith("template://"):
        name = spec.split(":", 1)[1].lstrip("/")
        name = LIMA_TEMPLATE_NAMES.get(name, name)
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
