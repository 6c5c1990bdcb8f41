"""The part of Go's text/template that Lima's templates use: ``{{.Name}}``, ``{{.Param.Key}}``, ``{{if}}`` /
``{{else}}`` / ``{{else if}}`` / ``{{end}}``, the functions ``not``, ``and``, ``or``, ``eq``, ``ne``, parentheses,
string literals, comments and the ``{{-`` / ``-}}`` whitespace trims.

Lima expands its YAML's scripts, messages and host paths with Go's text/template; the same text here gives the
same result.  Anything else (``range``, pipes, other functions) is an error that names what is not supported.
A field missing from the variables is empty in a condition (as Go's maps give their zero value) and an error
when printed: a misspelt ``{{.Parm.x}}`` must not become an empty string in a script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(`[^`]*`)|([^\s()]+))')


class TemplateError(ValueError):
    pass


def has_actions(text: str) -> bool:
    return "{{" in text


def expand(text: str, variables: Mapping[str, Any]) -> str:
    """``text`` with its actions evaluated against ``variables`` (``.X`` is ``variables["X"]``)."""
    if "{{" not in text:
        return text
    nodes, rest = _parse(_lex(text), ())
    if rest is not None:
        raise TemplateError(f"unexpected {{{{{rest}}}}}")
    return _render(nodes, variables)


def _lex(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) items with the trims applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        items.append(("text", chunk))
        items.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            while pos < len(text) and text[pos].isspace():
                pos += 1
    tail = text[pos:]
    if "{{" in tail:
        raise TemplateError("an action opened with {{ is not closed with }}")
    items.append(("text", tail))
    return items


# A node: ("text", str) | ("print", expr) | ("if", [(cond, nodes), ...], else_nodes)
Node = tuple[Any, ...]


def _parse(items: list[tuple[str, str]], stop: tuple[str, ...]) -> tuple[list[Node], str | None]:
    """Nodes from ``items`` (consumed from the front) up to one of the ``stop`` keywords, which is returned."""
    nodes: list[Node] = []
    while items:
        kind, s = items.pop(0)
        if kind == "text":
            if s:
                nodes.append(("text", s))
            continue
        if s.startswith("/*"):
            continue
        word = s.split(None, 1)[0] if s else ""
        if word in ("end", "else"):
            if word not in stop:
                raise TemplateError(f"{{{{{s}}}}} without an {{{{if}}}}")
            items.insert(0, ("action", s))
            return nodes, word
        if word == "if":
            branches: list[tuple[Any, list[Node]]] = []
            cond = _expr(s[2:])
            otherwise: list[Node] = []
            while True:
                body, how = _parse(items, ("else", "end"))
                if how is None:
                    raise TemplateError("{{if}} without its {{end}}")
                _, kw = items.pop(0)
                branches.append((cond, body))
                if kw == "end":
                    break
                after = kw[4:].strip()
                if after.startswith("if "):
                    cond = _expr(after[3:])
                    continue
                if after:
                    raise TemplateError(f"{{{{{kw}}}}} is not supported")
                otherwise, how = _parse(items, ("end",))
                if how is None:
                    raise TemplateError("{{else}} without its {{end}}")
                items.pop(0)
                break
            nodes.append(("if", branches, otherwise))
            continue
        if word in ("range", "with", "define", "template", "block", "break", "continue"):
            raise TemplateError(f"{{{{{word}}}}} is not supported by torpor")
        nodes.append(("print", _expr(s)))
    return nodes, None


def _expr(s: str) -> Any:
    tokens = _tokens(s)
    if "|" in tokens:
        raise TemplateError(f"pipes ({s.strip()}) are not supported by torpor")
    expr, rest = _call(tokens)
    if rest:
        raise TemplateError(f"cannot read {s.strip()!r}")
    return expr


def _tokens(s: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None or m.end() == pos:
            if s[pos:].strip():
                raise TemplateError(f"cannot read {s.strip()!r}")
            break
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


_FUNCS = ("not", "and", "or", "eq", "ne")


def _call(tokens: list[str]) -> tuple[Any, list[str]]:
    """An operand, or a function and its operands up to a closing parenthesis."""
    if tokens and tokens[0] in _FUNCS:
        name, rest = tokens[0], tokens[1:]
        args = []
        while rest and rest[0] != ")":
            arg, rest = _operand(rest)
            args.append(arg)
        return ("call", name, args), rest
    if tokens and re.fullmatch(r"[A-Za-z_]\w*", tokens[0]):
        raise TemplateError(f"the function {tokens[0]!r} is not supported by torpor")
    return _operand(tokens)


def _operand(tokens: list[str]) -> tuple[Any, list[str]]:
    if not tokens:
        raise TemplateError("an empty action")
    t, rest = tokens[0], tokens[1:]
    if t == "(":
        inner, rest = _call(rest)
        if not rest or rest[0] != ")":
            raise TemplateError("a ( is not closed")
        return inner, rest[1:]
    if t.startswith('"'):
        return ("lit", bytes(t[1:-1], "utf-8").decode("unicode_escape")), rest
    if t.startswith("`"):
        return ("lit", t[1:-1]), rest
    if t in ("true", "false"):
        return ("lit", t == "true"), rest
    if re.fullmatch(r"-?\d+", t):
        return ("lit", int(t)), rest
    if t == "." or re.fullmatch(r"(\.[A-Za-z_]\w*)+", t):
        return ("field", [p for p in t.split(".") if p]), rest
    raise TemplateError(f"cannot read {t!r}")


_MISSING = object()


def _eval(expr: Any, variables: Mapping[str, Any]) -> Any:
    kind = expr[0]
    if kind == "lit":
        return expr[1]
    if kind == "field":
        value: Any = variables
        for part in expr[1]:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
            if value is _MISSING:
                return _Missing(".".join(expr[1]))
        return value
    _, name, args = expr
    vals = [_eval(a, variables) for a in args]
    if name == "not":
        if len(vals) != 1:
            raise TemplateError("not takes one argument")
        return not _truth(vals[0])
    if name == "and":
        out: Any = True
        for v in vals:
            out = v
            if not _truth(v):
                return v
        return out
    if name == "or":
        for v in vals:
            if _truth(v):
                return v
        return vals[-1] if vals else False
    if len(vals) < 2:
        raise TemplateError(f"{name} takes two arguments")
    first = _plain(vals[0])
    equal = any(first == _plain(v) for v in vals[1:])
    return equal if name == "eq" else not equal


class _Missing:
    def __init__(self, name: str) -> None:
        self.name = name


def _plain(v: Any) -> Any:
    return None if isinstance(v, _Missing) else v


def _truth(v: Any) -> bool:
    return not isinstance(v, _Missing) and bool(v)


def _render(nodes: list[Node], variables: Mapping[str, Any]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            value = _eval(node[1], variables)
            if isinstance(value, _Missing):
                raise TemplateError(f"{{{{.{value.name}}}}} is not defined")
            out.append(_text(value))
        else:
            _, branches, otherwise = node
            for cond, body in branches:
                if _truth(_eval(cond, variables)):
                    out.append(_render(body, variables))
                    break
            else:
                out.append(_render(otherwise, variables))
    return "".join(out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<no value>"
    return str(value)
