"""The one place torpor runs subprocesses: argv lists, never a shell, stdin closed unless a command is interactive,
errors carry the stderr tail, and every command logged with ``shlex.join`` so it can be pasted into a shell.

``run`` runs a command to completion; ``run_async`` the same inside the host agent's event loop; ``spawn``
starts a long-lived child (QEMU, the SSH master, the host agent); ``interactive`` and ``replace`` hand the
terminal to a command (scp, ssh).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torpor.errors import CommandError

TYPE_CHECKING = False  # not typing's: the early restore path imports this module (see hostagent/events.py)
if TYPE_CHECKING:
    import asyncio
    from typing import IO, NoReturn

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
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=_env(env),
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


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    dies_with_parent: bool = True,
    group: bool = False,
    session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-lived child with stdin closed; the caller owns the returned process.

    ``dies_with_parent``: SIGKILLed if this process dies (QEMU, the SSH master: nothing outlives its host agent).
    ``group``: in its own process group (a Ctrl-C meant for a foreground host agent must not reach QEMU);
    ``session``: in its own session (the host agent, detached from the terminal of the `torpor start` that made it).
    ``env`` entries are added to a copy of the current environment.
    """
    args = [os.fspath(a) for a in argv]
    log.info("starting %s", shlex.join(args))
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=_env(env),
            cwd=cwd,
            preexec_fn=die_with_parent() if dies_with_parent else None,  # noqa: PLW1509 - one libc call, see there
            process_group=0 if group else None,
            start_new_session=session,
        )
    except FileNotFoundError as e:
        raise CommandError(args, 127, f"{args[0]}: command not found") from e


def spawn_daemon(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start QEMU: stdin and stdout closed, stderr piped, in its own process group, killed if its parent dies."""
    return spawn(argv, stderr=subprocess.PIPE, group=True)


async def run_async(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` inside the running event loop; return its exit code and its output (stdout and stderr),
    or -1 and "timed out" after ``timeout`` seconds (the process is killed)."""
    import asyncio  # the host agent's; not imported by the CLI's commands

    log.debug("running %s", shlex.join(argv))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "timed out"
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def spawn_async(argv: Sequence[str], cwd: Path) -> asyncio.subprocess.Process:
    """Start a long-lived child of the host agent's event loop with its stdin and stdout piped to it (its stderr
    goes to the agent's log); killed if the agent dies."""
    import asyncio

    log.info("starting %s (in %s)", shlex.join(argv), cwd)
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=cwd,
        preexec_fn=die_with_parent(),
    )


def interactive(argv: Sequence[str]) -> int:
    """Run ``argv`` on this process's terminal (stdin, stdout and stderr inherited); return its exit code."""
    log.debug("running %s", shlex.join(argv))
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError as e:
        raise CommandError(list(argv), 127, f"{argv[0]}: command not found") from e


def replace(argv: Sequence[str]) -> NoReturn:
    """Replace this process with ``argv`` (its exit code becomes ours, signals reach it directly)."""
    log.debug("running %s", shlex.join(argv))
    os.execvp(argv[0], list(argv))


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


def _env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if extra is None else {**os.environ, **extra}


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
