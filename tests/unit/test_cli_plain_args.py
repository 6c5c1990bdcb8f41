"""main.plain_args reads the plain forms of `torpor start` and `torpor stop` as the full parser does, and leaves
it the rest."""

import pytest

from torpor.cli.main import build_parser, plain_args

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
    ["start"],
    ["start", "vm1"],
    ["start", "--cold", "vm1"],
    ["start", "vm1", "--cold"],
    ["--no-tty", "start", "vm1"],
]
FIELDS = {"stop": ("force", "save"), "start": ("cold",)}


@pytest.mark.parametrize("argv", PLAIN, ids=" ".join)
def test_plain_forms_read_as_the_parser_reads_them(argv: list[str]) -> None:
    fast = plain_args(argv)
    full = build_parser(argv).parse_args(argv)
    assert fast is not None
    named = "names" if full.verb == "stop" else "name"
    for field in ("verb", "module", named, "tty", "debug", "log_level", *FIELDS[full.verb]):
        assert getattr(fast, field) == getattr(full, field), field
    assert set(vars(fast)) == set(vars(full))


OTHERS = [
    [],
    ["list"],
    ["restart", "vm1"],
    ["stop", "--help"],
    ["start", "-h"],
    ["stop", "--force", "vm1"],
    ["stop", "-f", "vm1"],
    ["--debug", "stop", "vm1"],
    ["--log-level", "info", "start", "vm1"],
    ["stop", "--save", "--no-save", "vm1"],  # the parser's error
    ["stop", "--cold", "vm1"],  # start's flag: the parser's error
    ["start", "--save", "vm1"],  # stop's flag: the parser's error
    ["start", "--cold", "--cold", "vm1"],
    ["stop", "vm1", "vm2"],  # several names
    ["start", "./vm.yaml"],  # a file: the instance is created first
    ["start", "template:docker"],
    ["start", "--cpus", "4", "vm.yaml"],
    ["stop", "--sav", "vm1"],  # an abbreviation the parser accepts
    ["start", "--", "vm1"],
    ["vm1", "stop"],
]


@pytest.mark.parametrize("argv", OTHERS, ids=" ".join)
def test_everything_else_goes_to_the_parser(argv: list[str]) -> None:
    assert plain_args(argv) is None
