"""The one place torpor runs subprocesses: argv lists, never a shell, stdin closed, errors carry the stderr tail."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torpor.errors import CommandError

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and capture its output as text.

    ``env`` entries are added to a copy of the current environment.  With ``check`` a non-zero exit raises
    :class:`CommandError` carrying argv, the exit code and the tail of stderr.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("running %s", shlex.join(args))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise CommandError(args, 127, f"{args[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise CommandError(args, -1, f"timed out after {timeout} s\n{stderr}") from e
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr)
    return proc


def spawn_daemon(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a long-lived child (QEMU): stdin and stdout closed, stderr piped, in its own process group (a Ctrl-C
    meant for a foreground host agent must not reach it; the agent decides how it stops), killed if its parent
    dies."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - it makes one libc call, see there
        process_group=0,
    )


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for long-lived children (QEMU, the SSH master): SIGKILL them if their parent dies.

    libc is looked up here, in the parent: between fork and exec the child only makes the one call (no imports,
    which could deadlock on a lock another thread of the parent held at fork time).
    """
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def stream_stdout(argv: Sequence[str | os.PathLike[str]]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its stdout as a pipe to read from; the caller must call :func:`finish`."""
    args = [os.fspath(a) for a in argv]
    log.debug("running %s", shlex.join(args))
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise CommandError(args, 127, f"{args[0]}: command not found") from e


def finish(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a process from :func:`stream_stdout` and raise :class:`CommandError` if it failed."""
    _, err = proc.communicate()
    if proc.returncode != 0:
        argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
        raise CommandError(argv, proc.returncode, err.decode(errors="replace"))
