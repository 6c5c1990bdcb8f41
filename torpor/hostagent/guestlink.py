"""The host agent's side of the guest: its seed and SSH config, the channels it reports on, SSH (the control
master that shells, copies and port forwards share), the QEMU guest agent, provisioning and port forwards.

:class:`Guest` is what the host agent needs of it; :class:`GuestLink` is the real one (a component test gives
the agent one that answers at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import socket
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torpor.guest import ssh as guest_ssh
from torpor.guest.agent import GuestAgent, GuestAgentError
from torpor.hostagent import ports, sockets
from torpor.hostagent.forwarder import PortForwarder
from torpor.hostagent.mounts import MountSet, guest_mount_points
from torpor.hostagent.sshaccess import SSHAccess
from torpor.store import atomic, filenames, snapshots

if TYPE_CHECKING:
    from torpor.config.schema import Config
    from torpor.driver.base import Shares

log = logging.getLogger(__name__)

GUEST_PROVISION_LOG = "/var/log/torpor/provision.log"
# $1's directory made and a socket left at $1 removed, as the user, else as root
CLEAR_GUEST_SOCKET = (
    'd=$(dirname "$1"); { mkdir -p "$d" && rm -f "$1"; } 2>/dev/null || '
    'sudo -n sh -c \'mkdir -p "$0" && rm -f "$1"\' "$d" "$1"'
)
CLOUD_INIT_TIMEOUT = 3600.0
Emit = Callable[..., None]


class Guest(Protocol):
    @property
    def forwards(self) -> list[str]:
        """The active port forwards, for the API."""
        ...

    def prepare_boot(self, config: Config) -> tuple[int, str]:
        """Before a cold boot (blocking): write its seed and SSH config; return the SSH port and the user."""
        ...

    def write_ssh_config(self, port: int, user: str) -> None:
        """Before a restore (blocking): the SSH config of the boot that was saved."""
        ...

    async def connect_channels(self, ready_channel: bool) -> None:
        """While the VM is created but has not run: the guest agent's channel, and torpor's ready channel."""
        ...

    @property
    def mounts(self) -> MountSet:
        """The mounts' relays (their sessions are part of a save)."""
        ...

    async def attach_mounts(
        self,
        mounts: list[dict[str, Any]],
        mount_type: str,
        saved: list[dict[str, Any]] | None,
        channels: tuple[socket.socket, ...],
        shares: Shares | None = None,
    ) -> None:
        """While the VM has not run: the mounts' channels (``channels``: connected already), their sessions as a
        save left them (``saved``) or new ones; ``shares``: the driver's devices for virtiofs mounts."""
        ...

    async def mount_points(self) -> set[str] | None:
        """The guest's mounted sshfs mount points, or None if the guest cannot say now."""
        ...

    async def ready_report(self) -> dict[str, str]:
        """What the default guest said when it reported ready (``ready uptime=3.1 boots=2``)."""
        ...

    async def ssh_up(self, master: subprocess.Popen[bytes] | None) -> None:
        """Until the guest's SSH answers (through ``master``, an SSH master started already, if given)."""
        ...

    async def set_clock(self) -> None:
        """Set the guest's clock to the host's (it stood still while saved)."""
        ...

    async def provisioning(self, status: str) -> str:
        """The default guest's provisioning outcome (its ready report's ``status``): what failed, or ""."""
        ...

    async def probes(self, probes: list[dict[str, Any]], param: dict[str, str]) -> str:
        """Run Lima's readiness probes as the user, in order; what failed (with the probe's hint), or ""."""
        ...

    async def copy_to_host(self, entries: list[dict[str, Any]], emit: Emit) -> None:
        """Lima's copyToHost: each guest file to its host path."""
        ...

    async def cloud_init(self) -> str:
        """In a cloud-init guest, wait until cloud-init has finished; return what failed, or ""."""
        ...

    async def service_ready(self, command: str) -> str:
        """Run ``command`` (the image's wait for its service) as the user; return what failed, or ""."""
        ...

    def forward_ports(self, rules: list[dict[str, Any]], emit: Emit) -> None:
        """Keep host port forwards in step with the guest's listening ports under these portForwards rules."""
        ...

    async def forward_sockets(self, forwards: list[sockets.SocketForward], emit: Emit) -> None:
        """Forward each host socket to its guest socket (before the guest is reported ready)."""
        ...

    def end(self) -> None:
        """Stop forwarding and end SSH at once (a stop goes on meanwhile)."""
        ...

    async def close(self) -> None: ...


class GuestLink:
    def __init__(self, inst_dir: Path, name: str, home: Path) -> None:
        self.dir = inst_dir
        self.name = name
        self.home = home
        self.ssh = SSHAccess(inst_dir, name)
        self.agent = GuestAgent()
        self.forwarder: PortForwarder | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # keeps background tasks referenced
        self._channels: list[asyncio.StreamWriter] = []
        self._ready: asyncio.Future[str] | None = None
        self._mounts = MountSet(self.agent)
        self._sockets: list[sockets.SocketForward] = []
        self._copied: list[Path] = []  # copyToHost files removed when the instance stops (deleteOnStop)

    @property
    def mounts(self) -> MountSet:
        return self._mounts

    async def attach_mounts(
        self,
        mounts: list[dict[str, Any]],
        mount_type: str,
        saved: list[dict[str, Any]] | None,
        channels: tuple[socket.socket, ...],
        shares: Shares | None = None,
    ) -> None:
        await self._mounts.attach(self.dir, mounts, saved, channels, mount_type=mount_type, shares=shares)

    async def mount_points(self) -> set[str] | None:
        if not self._mounts.config:
            return set()
        try:
            return guest_mount_points((await self.agent.read_file("/proc/mounts")).decode(errors="replace"))
        except GuestAgentError:
            return None

    @property
    def forwards(self) -> list[str]:
        tcp = sorted(str(f) for f in self.forwarder.active) if self.forwarder else []
        return tcp + [str(f) for f in self._sockets]

    def prepare_boot(self, config: Config) -> tuple[int, str]:
        from torpor.guest import cidata, images

        key, pubkey = guest_ssh.ensure_keypair(self.home)
        groups = images.USER_GROUPS.get(config.image_for_arch().location or "", ())
        user = replace(cidata.GuestUser.of(config.user.model_dump()), groups=groups)
        keys = [pubkey, *(guest_ssh.user_public_keys() if config.ssh.loadDotSSHPubKeys else [])]
        cidata.write(
            self.dir,
            self.name,
            user,
            keys,
            provision=config.provision,
            mounts=config.mounts,
            mount_type=config.mountType,
            setup=cidata.Setup.of(config),
        )
        port = config.ssh.localPort or guest_ssh.free_port(avoid=snapshots.held_ssh_ports(self.home))
        guest_ssh.write_config(self.dir, self.name, port, user.name, key)
        return port, user.name

    def write_ssh_config(self, port: int, user: str) -> None:
        key, _ = guest_ssh.ensure_keypair(self.home)
        guest_ssh.write_config(self.dir, self.name, port, user, key)

    async def connect_channels(self, ready_channel: bool) -> None:
        if ready_channel:
            self._ready = asyncio.get_running_loop().create_future()
            reader, writer = await asyncio.open_unix_connection(str(self.dir / filenames.READY_SOCK))
            self._channels.append(writer)  # dropping the writer would close the connection
            self._spawn(_read_ready(reader, self._ready))
        await self.agent.connect(self.dir / filenames.QGA_SOCK)

    async def ready_report(self) -> dict[str, str]:
        assert self._ready is not None, "the ready channel was not connected"
        return parse_ready(await self._ready)

    async def ssh_up(self, master: subprocess.Popen[bytes] | None) -> None:
        await self.ssh.connect_master(master)

    async def set_clock(self) -> None:
        while True:
            try:
                await self.agent.set_time()
                return
            except GuestAgentError as e:
                log.info("setting the guest clock: %s; retrying", e)
                await asyncio.sleep(0.1)

    async def provisioning(self, status: str) -> str:
        if status == "none":
            return ""
        try:
            text = (await self.agent.read_file(GUEST_PROVISION_LOG)).decode(errors="replace")
        except GuestAgentError as e:
            text = f"(could not read {GUEST_PROVISION_LOG}: {e})\n"
        atomic.write_text(self.dir / filenames.PROVISION_LOG, text, 0o600)
        for line in text.splitlines():
            log.info("provision: %s", line)
        if not status.startswith("failed:"):
            return ""
        _, script, code = [*status.split(":"), "", ""][:3]
        tail = "\n".join(text.rstrip().splitlines()[-10:])
        return f"{script} exited with code {code}:\n{tail}"

    async def service_ready(self, command: str) -> str:
        code, out = await self.ssh.run(["sh", "-c", shlex.quote(command)], timeout=CLOUD_INIT_TIMEOUT)
        return "" if code == 0 else f"`{command}` failed (exit code {code}): {out}"

    async def probes(self, probes: list[dict[str, Any]], param: dict[str, str]) -> str:
        """Run Lima's readiness probes as the user, in order; what failed (with the probe's hint), or ""."""
        env = "".join(f"export PARAM_{k}={shlex.quote(v)}; " for k, v in param.items())
        for i, probe in enumerate(probes):
            # (a script with #! runs with its interpreter, as Lima requires of probes)
            runner = f'{env}f=$(mktemp) && printf %s "$0" > "$f" && chmod +x "$f" && "$f"; rc=$?; rm -f "$f"; exit $rc'
            code, out = await self.ssh.run(
                ["sh", "-c", shlex.quote(runner), shlex.quote(probe["script"])], timeout=CLOUD_INIT_TIMEOUT
            )
            name = probe.get("description") or f"probes[{i}]"
            log.info("probe %s: exit code %s", name, code)
            if code != 0:
                tail = "\n".join(out.rstrip().splitlines()[-10:])
                hint = f"\nhint: {probe['hint'].strip()}" if probe.get("hint") else ""
                return f"readiness probe {name!r} failed (exit code {code}):\n{tail}{hint}"
        return ""

    async def copy_to_host(self, entries: list[dict[str, Any]], emit: Emit) -> None:
        """Lima's copyToHost: each guest file to its host path (made 0600 in a directory of the user's)."""
        for e in entries:
            host = Path(e["host"])
            if not host.is_absolute():
                host = self.dir / host
            try:
                data = await self.agent.read_file(e["guest"], limit=64 * 1024 * 1024)
            except GuestAgentError as err:
                if not e.get("skipIfMissing"):
                    emit("notice", f"copyToHost: cannot read {e['guest']} in the guest: {err}")
                continue
            try:
                await asyncio.to_thread(_write_copy, host, data)  # (fsynced: off the event loop)
            except OSError as err:
                emit("notice", f"copyToHost: cannot write {host}: {err.strerror}")
                continue
            if e.get("deleteOnStop"):
                self._copied.append(host)
            log.info("copied %s from the guest to %s", e["guest"], host)

    async def cloud_init(self) -> str:
        script = (
            "command -v cloud-init >/dev/null || { echo status: none; exit 0; }; "
            "cloud-init status --wait >/dev/null 2>&1; cloud-init status --long"
        )
        code, out = await self.ssh.run(["sh", "-c", shlex.quote(script)], timeout=CLOUD_INIT_TIMEOUT)
        status = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("status:")), "")
        log.info("cloud-init: %s", status or out)
        if status in ("done", "none", "disabled"):
            return ""
        return f"cloud-init finished with status {status or f'unknown (exit code {code})'}:\n{out}"

    def forward_ports(self, rules: list[dict[str, Any]], emit: Emit) -> None:
        port_rules = [
            ports.Rule.from_record(r) for r in rules if r.get("guestSocket") is None and r.get("proto") != "udp"
        ]
        self.forwarder = PortForwarder(self.agent, self.ssh, port_rules, emit)
        self._spawn(self.forwarder.run())

    async def forward_sockets(self, forwards: list[sockets.SocketForward], emit: Emit) -> None:
        for fwd in forwards:
            if (why := await asyncio.to_thread(sockets.problem, fwd)) is None:
                await asyncio.to_thread(sockets.prepare, fwd)
                if fwd.reverse:  # the guest's end: its directory, and no socket left by a saved session
                    await self.ssh.run(["sh", "-c", shlex.quote(CLEAR_GUEST_SOCKET), "_", shlex.quote(fwd.guest)])
                why = await self.ssh.forward(fwd.spec(), fwd.reverse)
            if why is None:
                self._sockets.append(fwd)
                docker = f"; for docker on the host: export DOCKER_HOST=unix://{fwd.host}" if fwd.is_docker else ""
                emit("port-forward", f"forwarding {fwd}{docker}")
                if fwd.is_docker and (late := await sockets.docker_answers(fwd)) is not None:
                    emit("notice", late)
            else:
                emit("notice", f"cannot forward {fwd}: {why}")

    def end(self) -> None:
        for task in self._tasks:
            task.cancel()
        # The port forwards are the SSH master's listening sockets: they close with it (cancelling them one by one
        # first ran ssh once per forward, on a stop's critical path).
        self.forwarder = None
        self.ssh.end_master()
        for fwd in self._sockets:  # (the master leaves its sockets behind)
            sockets.remove(fwd)
        self._sockets.clear()
        for path in self._copied:
            path.unlink(missing_ok=True)
        self._copied.clear()

    async def close(self) -> None:
        self.end()
        await self.ssh.stop_master()  # ended by a stop already, or now: reaped either way
        await self._mounts.close()
        self.agent.close()
        for w in self._channels:
            w.close()
        self._channels.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _write_copy(host: Path, data: bytes) -> None:
    host.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(host, data, 0o600)


async def _read_ready(reader: asyncio.StreamReader, ready: asyncio.Future[str]) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while line := await reader.readline():
            if line.startswith(b"ready") and not ready.done():
                ready.set_result(line.decode().strip())


def parse_ready(line: str) -> dict[str, str]:
    """The ``key=value`` fields of the guest's ready report (``ready uptime=3.1 boots=2``)."""
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
