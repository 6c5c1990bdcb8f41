"""Small helpers shared by the verbs."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def ask(question: str) -> str:
    """Ask ``question`` on the terminal; the answer, or "" (the question's default) at the end of input (Ctrl-D).

    Only ask where someone can answer: cli.main decides that once (``args.interactive``, from the terminals and
    --tty/--no-tty), and :func:`asker` follows it.
    """
    try:
        return input(question)
    except EOFError:
        print()
        return ""


def asker(args: object) -> Callable[[str], str] | None:
    """:func:`ask` if someone can answer the command's questions, else None (the caller must not ask)."""
    return ask if getattr(args, "interactive", False) else None


def report(message: str) -> None:
    """Progress for people, on stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Shows PROGRESS events as one rewritten line on a terminal; prints nothing otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty and sys.stderr.isatty()
        self.open = False

    def line(self, message: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + message)
            sys.stderr.flush()
            self.open = True

    def report(self, message: str) -> None:
        """A normal progress message: clears the progress line first."""
        self.end()
        report(message)

    def end(self) -> None:
        if self.open:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.open = False
