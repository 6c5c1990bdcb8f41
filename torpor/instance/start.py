"""Start an instance: prepare its disk on the first start, recover from a crashed run, spawn the host agent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.config import sources
from torpor.errors import HostAgentError, InstanceNotFound, InstanceStateError
from torpor.hostagent import events
from torpor.instance import spawn
from torpor.store import filenames, lock, savedstate
from torpor.store.instance import Status, clear_runtime_files, home, inspect, read_instance_yaml

if TYPE_CHECKING:
    from torpor.config.layering import Effective
    from torpor.config.schema import Config

# The restore path imports nothing heavy (pydantic, the driver): the configuration is validated by the host
# agent if its files changed since the boot, and by this module only when it cold boots or must ask about such
# changes.  See STYLE.md on start-up time.

Report = Callable[[str], None]
# Time allowed beyond the guest's bootTimeout for the agent's own start-up (KVM probe, QEMU start).
AGENT_MARGIN = 60.0


Ask = Callable[[str], str]


def start(
    name: str,
    report: Report,
    tty: bool,
    *,
    cold: bool = False,
    ask: Ask | None = None,
    progress: Report | None = None,
    root: Path | None = None,
    wait: float | None = None,
) -> events.Event:
    """Start ``name`` (creating it from the default template if it does not exist); return the ready event.

    A saved state is restored unless ``cold``.  If the configuration changed since the save, ``ask`` (given when
    someone can answer: cli.main decides) chooses between restoring now and discarding the state; without it the
    host agent restores and warns which fields changed.  ``wait``: seconds to wait for ready (Lima's
    ``--timeout``; by default the configuration's bootTimeout and a margin); the instance goes on booting after.
    """
    root = root or home()
    _create_if_missing(name, root, report)
    inst_dir = root / name
    with lock.exclusive(inst_dir / filenames.LOCK, f"instance {name!r}"):
        inst = inspect(name, root)
        if inst.status is Status.RUNNING:
            raise InstanceStateError(f"instance {name!r} is already running", hint=f"`torpor stop {name}` stops it")
        if inst.status is Status.BROKEN:
            _recover(inst.dir, inst.agent_pid, inst.qemu_pid, inst.reason, report)
        if cold and savedstate.present(inst_dir):
            savedstate.discard(inst_dir)
            report("discarded the saved state; cold booting")
        boot_timeout = _restore_timeout(inst_dir, root, edits_matter=ask is not None)
        if boot_timeout is None:  # a cold boot, or a restore that may need to ask about config changes
            boot_timeout = _prepare(inst_dir, root, report, tty, ask=None if cold else ask)
        clear_runtime_files(inst_dir)
        reader = events.EventReader(inst_dir / filenames.HA_STDOUT, 0)
        proc = spawn.spawn_hostagent(name, inst_dir, root)
        timeout = wait if wait is not None else boot_timeout + AGENT_MARGIN
        last = spawn.follow(
            reader,
            alive=lambda: proc.poll() is None,
            until=lambda ev: ev.type == events.READY,
            on_event=lambda ev: _show(ev, report, progress),
            timeout=timeout,
        )
    if last is not None and last.type == events.READY:
        return last
    if last is None and proc.poll() is None:
        reason = f"the instance did not become ready within {timeout:.0f} s"
        if wait is not None:
            raise HostAgentError(
                f"instance {name!r} is not ready after {timeout:.0f} s (--timeout); it goes on starting",
                hint=f"`torpor list {name}` shows when it is Running; `torpor stop {name}` stops it",
            )
    else:
        reason = last.message if last is not None else f"the host agent exited with code {proc.poll()}"
    raise HostAgentError(
        f"instance {name!r} failed to start: {reason}{_logs_tails(inst_dir)}",
        hint=f"`torpor stop --force {name}` cleans up if anything is left running",
    )


def _prepare(inst_dir: Path, root: Path, report: Report, tty: bool, ask: Ask | None) -> int:
    """Before a cold boot (or a restore whose configuration changed): validate the configuration, ask about its
    changes since the save where someone can answer, make the disk at the first start; return the boot timeout."""
    from torpor.config.layering import load_effective
    from torpor.hostagent import mounts, sockets

    effective = load_effective(root, read_instance_yaml(inst_dir), str(inst_dir / filenames.INSTANCE_YAML))
    for w in effective.warnings:
        report(f"warning: {w}")
    config_json = effective.config.model_dump(mode="json")
    mounts.check_locations(config_json)
    sockets.check(sockets.from_config(inst_dir, config_json))
    if ask is not None:
        _ask_about_config_changes(inst_dir, effective, report, ask)
    if not (inst_dir / filenames.DISK).exists():
        _first_start(inst_dir, effective.config, report, tty)
    return effective.config.bootTimeout


def _create_if_missing(name: str, root: Path, report: Report) -> None:
    try:
        inspect(name, root)
    except InstanceNotFound:
        from torpor.config.layering import template_names
        from torpor.instance.create import DEFAULT_TEMPLATE, create

        # `start docker` makes "docker" from template:docker; a name no template has, from the default one.
        template = f"template:{name}" if name in template_names() else DEFAULT_TEMPLATE
        report(f"creating instance {name!r} from {template}")
        _, warnings = create(template, name, root)
        for w in warnings:
            report(f"warning: {w}")


def _logs_tails(inst_dir: Path) -> str:
    """The last lines of the host agent's log and of the guest console, for a failed start's message."""
    detail = ""
    if logs := spawn.tail(inst_dir / filenames.HA_STDERR):
        detail += f"\n--- last lines of {inst_dir / filenames.HA_STDERR}:\n{logs}"
    if serial := spawn.tail(inst_dir / filenames.SERIAL_LOG):
        detail += f"\n--- last lines of the guest console {inst_dir / filenames.SERIAL_LOG}:\n{serial}"
    return detail


def _restore_timeout(inst_dir: Path, root: Path, edits_matter: bool) -> int | None:
    """The boot timeout of a saved state that the host agent will try to restore; None if there is none, or if
    ``edits_matter`` and the configuration files changed since the boot that was saved."""
    try:
        saved = savedstate.load(inst_dir)
    except savedstate.Unusable:
        return None
    if saved is None:
        return None
    if edits_matter and not sources.unchanged_since(saved.manifest["boot"]["configSources"], root, inst_dir):
        return None
    return int(saved.manifest["config"]["bootTimeout"])


def _ask_about_config_changes(inst_dir: Path, effective: Effective, report: Report, ask: Ask) -> None:
    try:
        saved = savedstate.load(inst_dir)
    except savedstate.Unusable:
        return  # the host agent sets it aside and says why
    if saved is None or saved.manifest["configDigest"] == effective.digest():
        return
    changed = savedstate.changed_fields(saved.manifest["config"], effective.config.model_dump(mode="json"))
    answer = ask(
        f"the configuration of {inst_dir.name!r} changed since its state was saved ({', '.join(changed)}).\n"
        "[r]estore now (the changes apply at the next cold boot) or [d]iscard the saved state and cold boot "
        "with the new configuration? [R/d] "
    )
    if answer.strip().lower() in ("d", "discard"):
        savedstate.discard(inst_dir)
        report("discarded the saved state; cold booting with the new configuration")


def _show(ev: events.Event, report: Report, progress: Report | None) -> None:
    if ev.type in (events.STARTING, events.EXITING):
        return
    if ev.type == events.PROGRESS:
        if progress is not None:
            progress(ev.message)
        return
    report(ev.message)


def _first_start(inst_dir: Path, config: Config, report: Report, tty: bool) -> None:
    from torpor.driver.qemu import factory
    from torpor.guest import images
    from torpor.store.cache import cache_root

    base = images.prepare(inst_dir, config, cache_root(), report, show_progress=tty)
    factory.create_disk(inst_dir, config.disk, base)


def _recover(inst_dir: Path, agent_pid: int | None, qemu_pid: int | None, reason: str, report: Report) -> None:
    if agent_pid is not None:
        raise InstanceStateError(
            f"instance {inst_dir.name!r} is broken: {reason}",
            hint=f"`torpor stop --force {inst_dir.name}` kills it, then start again",
        )
    report(f"recovering: {reason}")
    if qemu_pid is not None:
        spawn.kill_and_wait(qemu_pid)
    clear_runtime_files(inst_dir)
