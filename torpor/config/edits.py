"""Lima's edit flags on an instance YAML: ``--cpus``, ``--memory``, ``--disk``, ``--mount``, ``--mount-type``,
``--mount-none``, ``--param`` and ``--set`` (a yq expression), for ``create``, ``start FILE`` and ``edit``.

``--set`` takes the part of yq's language such edits use: assignments ``.a.b = VALUE`` and ``.a += [VALUE]``,
joined with ``|``; paths of ``.key``, ``."quoted key"`` and ``[N]``; values in YAML (``"text"``, ``4``, ``true``,
``[..]``, ``{..}``).  Anything else is refused with what is supported.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torpor.errors import ConfigError

if TYPE_CHECKING:
    import argparse

# The fields the edit flags set (argparse's dest names).
FIELDS = ("cpus", "memory", "disk", "mount", "mount_type", "mount_none", "param", "set_expr")

_STEP = re.compile(r'\.(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+))|\[(\d+)\]')


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The edit flags (Lima's names and meanings)."""
    p.add_argument("--cpus", type=int, help="number of CPUs")
    p.add_argument("--memory", type=float, help="memory in GiB")
    p.add_argument("--disk", type=float, help="disk size in GiB (a larger disk grows at the next cold boot)")
    p.add_argument("--mount", action="append", default=[], metavar="DIR[:w]", help="add a mount (:w writable)")
    p.add_argument("--mount-type", choices=["reverse-sshfs", "9p", "virtiofs"], help="the mounts' type")
    p.add_argument("--mount-none", action="store_true", help="remove every mount")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="set param KEY")
    p.add_argument(
        "--set",
        dest="set_expr",
        action="append",
        default=[],
        metavar="EXPR",
        help="a yq assignment such as '.cpus = 4 | .env.FOO = \"bar\"'",
    )


def wanted(args: object) -> bool:
    """Whether any edit flag was given (``--cpus 0`` counts: validation refuses it)."""
    return any(getattr(args, f, None) not in (None, False, []) for f in FIELDS)


def apply(text: str, args: object, source: str) -> str:
    """``text`` (an instance YAML) with the edit flags applied; the original text if none was given."""
    if not wanted(args):
        return text
    import yaml

    from torpor.config.layering import parse_yaml

    data = parse_yaml(text, source)
    args = _Flags(args)
    if args.cpus is not None:
        data["cpus"] = args.cpus
    if args.memory is not None:
        data["memory"] = f"{args.memory:g}GiB"
    if args.disk is not None:
        data["disk"] = f"{args.disk:g}GiB"
    if args.mount_none:
        data["mounts"] = []
    for spec in args.mount:
        location, _, mode = spec.rpartition(":") if spec.endswith((":w", ":ro")) else (spec, "", "")
        data.setdefault("mounts", []).append({"location": location, "writable": mode == "w"})
    if args.mount_type:
        data["mountType"] = args.mount_type
    for kv in args.param:
        key, eq, value = kv.partition("=")
        if not eq or not key:
            raise ConfigError(f"--param {kv!r}: expected KEY=VALUE")
        data.setdefault("param", {})[key] = value
    for expr in args.set_expr:
        set_expression(data, expr)
    header = "" if text.startswith("# Made from") else f"# {source}, edited with torpor's flags.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


class _Flags:
    """The edit flags of a namespace (argparse's, or a plain start's)."""

    def __init__(self, args: object) -> None:
        self.cpus: int | None = getattr(args, "cpus", None)
        self.memory: float | None = getattr(args, "memory", None)
        self.disk: float | None = getattr(args, "disk", None)
        self.mount: list[str] = getattr(args, "mount", None) or []
        self.mount_type: str | None = getattr(args, "mount_type", None)
        self.mount_none: bool = bool(getattr(args, "mount_none", False))
        self.param: list[str] = getattr(args, "param", None) or []
        self.set_expr: list[str] = getattr(args, "set_expr", None) or []


def set_expression(data: dict[str, Any], expr: str) -> None:
    """Apply a ``--set`` expression to ``data`` in place."""
    for path, append, value in assignments(expr):
        assign(data, path, value, append=append, expr=expr)


Path_ = list[str | int]


def assignments(expr: str, what: str = "--set") -> list[tuple[Path_, bool, Any]]:
    """The assignments of a yq expression: (path, whether it appends, value), or a ConfigError naming ``what``."""
    import yaml

    out = []
    for part in _split(expr):
        m = re.fullmatch(r"\s*(\.[^=+]*?)\s*(\+?=)\s*(.*?)\s*", part, re.S)
        if m is None:
            raise ConfigError(
                f"{what} {expr!r}: torpor understands assignments such as '.cpus = 4' and '.mounts += [{{...}}]' "
                "joined with |"
            )
        path, op, raw = _path(m.group(1), expr, what), m.group(2), m.group(3)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{what} {expr!r}: {raw!r} is not a YAML value") from None
        out.append((path, op == "+=", value))
    return out


def _split(expr: str) -> list[str]:
    """``expr`` split at the ``|`` outside quotes and brackets."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in expr:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def _path(text: str, expr: str, what: str = "--set") -> list[str | int]:
    steps: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise ConfigError(f'{what} {expr!r}: cannot read the path {text!r} (use .key, ."key" and [N])')
        if m.group(3) is not None:
            steps.append(int(m.group(3)))
        else:
            steps.append(m.group(2) if m.group(2) is not None else m.group(1).replace('\\"', '"'))
        pos = m.end()
    if not steps:
        raise ConfigError(f"{what} {expr!r}: an assignment needs a path such as .cpus")
    return steps


def assign(data: Any, path: list[str | int], value: Any, *, append: bool, expr: str) -> None:
    node = data
    for i, step in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise ConfigError(f"--set {expr!r}: there is no item [{step}]")
            if node[step] is None:
                node[step] = [] if isinstance(nxt, int) else {}
            node = node[step]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {expr!r}: .{step} is inside something that is not a mapping")
            if node.get(step) is None:
                node[step] = [] if isinstance(nxt, int) else {}
            node = node[step]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise ConfigError(f"--set {expr!r}: there is no item [{last}]")
        if last == len(node):
            node.append(None)
        current = node[last]
    else:
        if not isinstance(node, dict):
            raise ConfigError(f"--set {expr!r}: .{last} is inside something that is not a mapping")
        current = node.get(last)
    if append:
        if current is None:
            current = []
        if not isinstance(current, list) or not isinstance(value, list):
            raise ConfigError(f"--set {expr!r}: += appends a list to a list")
        value = current + value
    node[last] = value
