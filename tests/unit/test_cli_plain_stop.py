"""main.plain_stop reads the plain forms of `torpor stop` as the full parser does, and leaves it the rest."""

import pytest

from torpor.cli.main import build_parser, plain_stop

PLAIN = [
    ["stop"],
    ["stop", "vm1"],
    ["stop", "--save"],
    ["stop", "--save", "vm1"],
    ["stop", "vm1", "--save"],
    ["stop", "--no-save", "vm1"],
    ["--no-tty", "stop", "--save", "vm1"],
    ["--tty", "stop", "vm1"],
    ["--tty", "--no-tty", "stop", "vm1"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=" ".join)
def test_plain_forms_read_as_the_parser_reads_them(argv: list[str]) -> None:
    fast = plain_stop(argv)
    full = build_parser(argv).parse_args(argv)
    assert fast is not None
    for field in ("module", "name", "force", "save", "tty", "debug", "log_level"):
        assert getattr(fast, field) == getattr(full, field), field


OTHERS = [
    [],
    ["start", "vm1"],
    ["list"],
    ["stop", "--help"],
    ["stop", "-h"],
    ["stop", "--force", "vm1"],
    ["stop", "-f", "vm1"],
    ["--debug", "stop", "vm1"],
    ["--log-level", "info", "stop", "vm1"],
    ["stop", "--save", "--no-save", "vm1"],  # the parser's error
    ["stop", "vm1", "vm2"],  # the parser's error
    ["stop", "--sav", "vm1"],  # an abbreviation the parser accepts
    ["stop", "--", "vm1"],
    ["vm1", "stop"],
]


@pytest.mark.parametrize("argv", OTHERS, ids=" ".join)
def test_everything_else_goes_to_the_parser(argv: list[str]) -> None:
    assert plain_stop(argv) is None
