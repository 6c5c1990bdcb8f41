"""README.md's command table and the CLI agree: the same verbs, subcommands and flags."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from torpor.cli.main import VERBS, build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> dict[str, list[str]]:
    """verb -> the lines of README's command table that document it (the code block under "## Commands")."""
    text = README.read_text()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    rows: dict[str, list[str]] = {}
    for line in block.splitlines():
        if line.startswith("torpor "):
            rows.setdefault(line.split()[1], []).append(line)
    return rows


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands, without -h/--help."""
    found = {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
    for sub in subparsers(parser).values():
        found |= options(sub)
    return found


def documented_verbs() -> dict[str, argparse.ArgumentParser]:
    verbs = subparsers(build_parser())
    return {verb: verbs[verb] for verb, (_, help_) in VERBS.items() if help_ is not None}


def test_every_verb_is_in_the_readme_and_every_readme_verb_exists() -> None:
    assert set(readme_commands()) == set(documented_verbs())


def edit_flags() -> set[str]:
    """The edit flags, as README lists them once (its `torpor start ... --cpus N ...` row)."""
    from torpor.config import edits

    p = argparse.ArgumentParser()
    edits.add_arguments(p)
    listed = {f for row in readme_commands()["start"] for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", row)}
    flags = options(p)
    assert flags <= listed, f"README's start rows do not list the edit flags {flags - listed}"
    return flags


def test_readme_flags_and_subcommands_are_the_clis() -> None:
    rows = readme_commands()
    for verb, parser in documented_verbs().items():
        # Flags: each one the README names exists, and each one the verb has is named (long or short form).
        named = {f for row in rows[verb] for f in re.findall(r"(?<![\w-])--?[a-z][\w-]*", row.split("  ")[0])}
        named |= {f for row in rows[verb] for f in re.findall(r"\(\w+: (--?[a-z][\w-]*)\)", row)}
        if any("[EDIT FLAGS]" in row for row in rows[verb]):  # the edit flags, listed once under start
            named |= edit_flags()
        have = options(parser)
        assert named <= have, f"README names flags {named - have} that `torpor {verb}` does not have"
        for action in [a for p in (parser, *subparsers(parser).values()) for a in p._actions]:
            strings = [s for s in action.option_strings if s not in ("-h", "--help")]
            if strings:
                assert set(strings) & named, f"`torpor {verb}` has {strings[-1]}, which README does not name"
        # Subcommands: the README's a|b|c after the verb are exactly the verb's.
        subs = set(subparsers(parser))
        if subs:
            listed = {s for row in rows[verb] for s in row.split()[2].split("|")}
            assert listed == subs, f"`torpor {verb}` has {sorted(subs)}, README lists {sorted(listed)}"


def test_top_level_help_lists_the_same_verbs() -> None:
    helptext = build_parser().format_help()
    for verb in documented_verbs():
        assert re.search(rf"^\s+{re.escape(verb)}\s", helptext, re.M), verb
