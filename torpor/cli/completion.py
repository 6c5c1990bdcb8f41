"""``torpor completion bash|zsh``: a completion script for the shell; it calls the hidden ``torpor __complete``,
which answers from the CLI's own parser (verbs, subcommands, flags) and the instance names."""

from __future__ import annotations

import argparse

BASH = """# torpor's bash completion: eval "$(torpor completion bash)" (e.g. in ~/.bashrc)
_torpor() {
    local IFS=$'\\n'
    COMPREPLY=($(torpor __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
}
complete -o default -F _torpor torpor
"""

ZSH = """#compdef torpor
# torpor's zsh completion: eval "$(torpor completion zsh)" (e.g. in ~/.zshrc, after compinit)
_torpor() {
    local -a candidates
    candidates=(${(f)"$(torpor __complete $((CURRENT - 1)) ${words[@]} 2>/dev/null)"})
    compadd -a candidates
}
compdef _torpor torpor
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    if p.prog.endswith("__complete"):
        p.add_argument("cword", type=int)
        p.add_argument("words", nargs=argparse.REMAINDER)
    else:
        p.add_argument("shell", choices=["bash", "zsh"])


def run(args: argparse.Namespace) -> int:
    if args.verb == "completion":
        print(BASH if args.shell == "bash" else ZSH, end="")
        return 0
    words = list(args.words)
    current = words[args.cword] if 0 <= args.cword < len(words) else ""
    for c in candidates(words[1 : args.cword], current):
        print(c)
    return 0


def candidates(before: list[str], current: str) -> list[str]:
    """What may come at ``current`` after the words ``before`` (the verb and its arguments so far)."""
    from torpor.cli.main import VERBS, build_parser

    parser = build_parser()
    verbs = subparsers(parser)
    words = [w for w in before if not w.startswith("-")]
    if not words:
        found = [v for v, (_, help_) in VERBS.items() if help_] if not current.startswith("-") else []
        found += [s for a in parser._actions for s in a.option_strings] if current.startswith("-") else []
    else:
        verb = verbs.get(words[0])
        if verb is None:
            return []
        subs = subparsers(verb)
        if subs and len(words) == 1 and not current.startswith("-"):
            found = list(subs)
        else:
            target = subs.get(words[1], verb) if subs and len(words) > 1 else verb
            if current.startswith("-"):
                found = [s for a in target._actions for s in a.option_strings]
            else:
                found = _names()
                if words[0] in ("start", "create", "validate"):
                    from torpor.config.layering import template_names

                    found += [f"template:{t}" for t in template_names()]
    return sorted(c for c in set(found) if c.startswith(current))


def _names() -> list[str]:
    from torpor.store.instance import home, list_names

    try:
        return list_names(home())
    except OSError:
        return []


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
