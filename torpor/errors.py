"""torpor's exception tree.

Every error a user can meet is a :class:`TorporError`: a message that says what happened and, where there is one,
a ``hint`` that says what to do next.  Only the CLI entry point turns these into text and an exit code.

    TorporError
    ├── ConfigError            invalid YAML or schema violations (all problems at once)
    ├── InstanceError          the instance is missing, exists already, or is in the wrong state
    │   ├── InstanceNotFound
    │   ├── InstanceExists
    │   └── InstanceStateError
    ├── ImageError             fetching or building a guest image failed (digest mismatch, apt failure, ...)
    ├── CommandError           a subprocess failed (carries argv, exit code, stderr tail)
    ├── DriverError            the VM driver or QEMU failed
    │   └── QMPCommandError    QEMU rejected a QMP command (carries QEMU's error class)
    └── HostAgentError         the host agent failed to start, answer or stop
"""

from __future__ import annotations

from collections.abc import Sequence


class TorporError(Exception):
    """Base of every error torpor reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(TorporError):
    """The configuration is invalid; ``problems`` lists every problem, each prefixed by its field path."""

    def __init__(self, message: str, problems: Sequence[str] = (), *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class InstanceError(TorporError):
    pass


class InstanceNotFound(InstanceError):
    pass


class InstanceExists(InstanceError):
    pass


class InstanceStateError(InstanceError):
    pass


class ImageError(TorporError):
    pass


class CommandError(TorporError):
    """A subprocess exited with an error."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        import shlex

        tail = "\n".join(stderr.strip().splitlines()[-10:])
        msg = f"command failed with exit code {returncode}: {shlex.join(argv)}"
        if tail:
            msg += "\n" + tail
        super().__init__(msg)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class DriverError(TorporError):
    pass


class QMPCommandError(DriverError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU rejected {command}: {desc} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class HostAgentError(TorporError):
    pass
