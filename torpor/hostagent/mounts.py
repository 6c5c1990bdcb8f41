"""Host directories in the guest (``mounts``, type ``reverse-sshfs``): sshfs in the guest speaks SFTP to OpenSSH's
``sftp-server`` on the host, as in Lima, but over a virtio-serial channel of its own instead of an SSH connection.

The channel is what lets a mount survive a save.  A save stops the VM between two SFTP packets (see
:meth:`Relay.hold`): every request the server has is answered and delivered, the ones sent after are kept.  The
guest's sshfs is saved with the VM, its session and its open handles in its memory; the host's side of that
session is small and is saved beside it (:meth:`Relay.export`): the handles the guest holds, each with the path and
flags it was opened with, and the bytes of the requests not yet served.  A restore starts a new sftp-server, opens
those paths again under the same handles and serves the kept requests before anything new
(:meth:`Relay.adopt`, then :meth:`Relay.resume_session`);
sshfs never sees a disconnection, so open descriptors, current directories and mounts stay as they were.

Handles are the relay's own (``Relay._handles``), mapped to the server's, so that the handles of a new server
never clash with the ones the guest holds.  A file that cannot be opened again (removed on the host while saved)
answers its holder's requests with an error, and the restore says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import socket
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.errors import ConfigError, TorporError

if TYPE_CHECKING:
    from torpor.driver.base import Shares
    from torpor.guest.agent import GuestAgent

log = logging.getLogger(__name__)

# SFTP version 3 (draft-ietf-secsh-filexfer-02), the version OpenSSH and sshfs speak.
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR = range(1, 13)
STATUS, HANDLE, DATA, NAME, ATTRS = range(101, 106)
EXTENDED = 200
HANDLE_FIRST = frozenset({CLOSE, READ, WRITE, FSTAT, FSETSTAT, READDIR})  # requests whose first field is a handle
HANDLE_EXTENSIONS = frozenset({b"fsync@openssh.com", b"fstatvfs@openssh.com"})  # extended ones that are too
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_FAILURE = 0, 1, 2, 4
PFLAGS_KEPT = 0x1 | 0x2 | 0x4  # READ, WRITE, APPEND: what reopening a file keeps of its open flags
MAX_PACKET = 1 << 20

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/openssh/sftp-server",  # Fedora
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",  # Arch
)
SCRATCH = "/tmp/torpor"  # the templates' shared scratch directory (Lima's /tmp/lima): made when missing


def check_locations(config: dict[str, Any]) -> None:
    """Before a boot (``config`` as the schema dumps it): every mount's host directory is there (the scratch
    directory is made) and so is sftp-server; else a clear error.  (Lima makes missing directories; torpor
    refuses them, a typo being likelier than a wish for a new directory.)"""
    for m in config["mounts"]:
        location = Path(m["location"])
        if str(location) == SCRATCH:
            location.mkdir(mode=0o755, exist_ok=True)
        if not location.is_dir():
            what = "is not a directory" if location.exists() else "does not exist"
            raise ConfigError(
                f"mounts: {location} {what} on the host",
                hint=f"create it (mkdir -p {shlex.quote(str(location))}) or remove that mount from the configuration",
            )
    if config["mounts"]:
        sftp_server()


def sftp_server() -> str:
    """OpenSSH's sftp-server on this host; a clear error if there is none."""
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("sftp-server")
    if found:
        return found
    raise ConfigError(
        "mounts of type reverse-sshfs need OpenSSH's sftp-server on the host, and none was found",
        hint="install it (Debian and Ubuntu: apt install openssh-sftp-server), or remove the mounts",
    )


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", data, pos)
    end = pos + 4 + n
    if end > len(data):
        raise ValueError("truncated SFTP string")
    return data[pos + 4 : end], end


def _pack_string(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s


def _packet(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def status(req_id: int, code: int, message: str) -> bytes:
    return _packet(
        bytes([STATUS]) + struct.pack(">II", req_id, code) + _pack_string(message.encode()) + _pack_string(b"")
    )


def take_packet(buf: bytearray) -> bytes | None:
    """Take the first complete packet (its length prefix included) off the front of ``buf``, if there is one."""
    if len(buf) < 4:
        return None
    (n,) = struct.unpack_from(">I", buf, 0)
    if n < 5 or n > MAX_PACKET:
        raise ValueError(f"an SFTP packet of {n} bytes")
    if len(buf) < 4 + n:
        return None
    raw = bytes(buf[: 4 + n])
    del buf[: 4 + n]
    return raw


@dataclass
class OpenHandle:
    """What the guest holds: a file or a directory the server opened, and how to open it again."""

    dir: bool
    path: bytes
    pflags: int = 0
    server: bytes | None = None  # the server's handle; None: it could not be opened again
    eof: bool = False  # a directory read to its end

    def record(self) -> dict[str, Any]:
        return {"dir": self.dir, "path": base64.b64encode(self.path).decode(), "pflags": self.pflags, "eof": self.eof}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> OpenHandle:
        return cls(bool(r["dir"]), base64.b64decode(r["path"]), int(r["pflags"]), eof=bool(r["eof"]))


@dataclass
class _Request:
    raw: bytes  # as the guest sent it (its handles, not the server's)
    kind: int
    opens: OpenHandle | None = None  # an OPEN or OPENDIR: what its handle will be
    handle: bytes | None = None  # the guest handle it names


@dataclass
class Relay:
    """One mount's SFTP session between the guest's sshfs and a host sftp-server, kept across saves."""

    index: int
    location: Path
    writable: bool
    channel: Path  # QEMU's end of the virtio-serial port (a unix socket QEMU listens on)
    _server: asyncio.subprocess.Process | None = None
    _guest_r: asyncio.StreamReader | None = None
    _guest_w: asyncio.StreamWriter | None = None
    _handles: dict[bytes, OpenHandle] = field(default_factory=dict)
    _next_handle: int = 1
    _inflight: dict[int, _Request] = field(default_factory=dict)  # by request id, sent to the server
    _parked: list[bytes] = field(default_factory=list)  # requests held back while the VM is being saved
    _inbuf: bytearray = field(default_factory=bytearray)  # the guest's bytes short of a whole packet
    _holding: bool = False  # new requests are parked: the VM is being saved
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _thawed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    initialized: bool = False  # the guest's sshfs has opened the session
    dead: str = ""  # why there is no server (after a restore): every request gets an error
    lost: list[str] = field(default_factory=list)  # what a restore could not keep

    # -- set-up ---------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """While the VM has not run: connect to the channel and start the server."""
        self._guest_r, self._guest_w = await asyncio.open_unix_connection(str(self.channel), limit=4 * MAX_PACKET)
        await self._start_server()
        self._start_pumps()

    def _start_pumps(self) -> None:
        self._idle.set()
        self._thawed.set()
        self._tasks = [asyncio.ensure_future(self._from_guest())]
        if self._server is not None:
            self._tasks.append(asyncio.ensure_future(self._from_server()))

    async def adopt(self, channel: socket.socket | None = None) -> None:
        """While a restored VM has not run: its channel connected (``channel``: connected already, by the early
        restore path).  What the guest sends waits in the socket until :meth:`resume_session`."""
        if channel is not None:
            channel.setblocking(False)
            self._guest_r, self._guest_w = await asyncio.open_unix_connection(sock=channel, limit=4 * MAX_PACKET)
        else:
            self._guest_r, self._guest_w = await asyncio.open_unix_connection(str(self.channel), limit=4 * MAX_PACKET)

    async def resume_session(self, state: dict[str, Any]) -> None:
        """The saved session's server side again (the VM may run meanwhile: its requests wait), then the pumps."""
        self.initialized = bool(state["initialized"])
        self._next_handle = int(state["nextHandle"])
        try:
            await self._start_server()
        except OSError as e:
            # The guest gets an error for each request rather than no answer (which would hang its processes).
            self.dead = f"{self.location}: {e.strerror or e}"
            self.lost.append(f"the mount of {self.dead}")
            self._inbuf += base64.b64decode(state["pending"])
            self._start_pumps()
            return
        if self.initialized:
            await self._server_init()
        for key, rec in state["handles"].items():
            h = OpenHandle.from_record(rec)
            h.server = await self._reopen(h)
            if h.server is None:
                self.lost.append(f"{self.location / os.fsdecode(h.path)} (no longer there on the host)")
            self._handles[bytes.fromhex(key)] = h
        self._inbuf += base64.b64decode(state["pending"])
        self._start_pumps()

    async def _start_server(self) -> None:
        from torpor import subp

        # -u 022: new files get the mode the guest asks for, less the usual umask (not the agent's own 077).
        argv = [sftp_server(), "-e", "-l", "ERROR", "-u", "022", *([] if self.writable else ["-R"])]
        self._server = await subp.spawn_async(argv, cwd=self.location)

    async def _server_init(self) -> None:
        """The new server's session opened as the guest opened the old one's."""
        assert self._server is not None and self._server.stdin is not None and self._server.stdout is not None
        self._server.stdin.write(_packet(bytes([INIT]) + struct.pack(">I", 3)))
        await self._server.stdin.drain()
        await self._read_server_packet()  # VERSION

    async def _read_server_packet(self) -> bytes:
        assert self._server is not None and self._server.stdout is not None
        head = await self._server.stdout.readexactly(4)
        (n,) = struct.unpack(">I", head)
        return head + await self._server.stdout.readexactly(n)

    async def _reopen(self, h: OpenHandle) -> bytes | None:
        assert self._server is not None and self._server.stdin is not None
        if h.dir:
            body = bytes([OPENDIR]) + struct.pack(">I", 0) + _pack_string(h.path)
        else:
            body = bytes([OPEN]) + struct.pack(">I", 0) + _pack_string(h.path)
            body += struct.pack(">II", h.pflags & PFLAGS_KEPT, 0)  # no attributes
        self._server.stdin.write(_packet(body))
        await self._server.stdin.drain()
        reply = await self._read_server_packet()
        if reply[4] != HANDLE:
            return None
        handle, _ = _string(reply, 9)
        return handle

    # -- the two directions ---------------------------------------------------------------------------------
    async def _from_guest(self) -> None:
        assert self._guest_r is not None
        try:
            while True:
                # A packet leaves the buffer only as it is parked or written to the server (no await between),
                # so that cancelling this task (export) loses nothing.
                while (raw := take_packet(self._inbuf)) is not None:
                    if self._holding and (not self._thawed.is_set() or raw[4] not in (READDIR, CLOSE)):
                        self._parked.append(raw)
                    else:
                        await self._to_server(raw)
                data = await self._guest_r.read(1 << 16)
                if not data:
                    return
                self._inbuf += data
        except (ConnectionError, ValueError) as e:
            log.warning("mount %d: the guest's side: %s", self.index, e)

    async def _to_server(self, raw: bytes) -> None:
        kind = raw[4]
        if self.dead:
            if kind == INIT:
                self._answer(_packet(bytes([VERSION]) + struct.pack(">I", 3)))
            else:
                self._answer(status(struct.unpack_from(">I", raw, 5)[0], FX_FAILURE, self.dead))
            return
        assert self._server is not None and self._server.stdin is not None
        if kind == INIT:
            self.initialized = True
            self._server.stdin.write(raw)
            return
        (req_id,) = struct.unpack_from(">I", raw, 5)
        req = _Request(raw, kind)
        out = raw
        if kind == OPEN:
            path, pos = _string(raw, 9)
            (pflags,) = struct.unpack_from(">I", raw, pos)
            req.opens = OpenHandle(False, path, pflags)
        elif kind == OPENDIR:
            req.opens = OpenHandle(True, _string(raw, 9)[0])
        elif kind in HANDLE_FIRST or kind == EXTENDED:
            out = self._server_handles(req)
            if not out:
                return  # answered already
        self._inflight[req_id] = req
        self._idle.clear()
        try:
            self._server.stdin.write(out)
            await self._server.stdin.drain()
        except ConnectionError:
            self._server_gone()

    def _server_handles(self, req: _Request) -> bytes:
        """The request with the server's handle in place of the guest's; b"" if the relay answered it itself."""
        raw = req.raw
        (req_id,) = struct.unpack_from(">I", raw, 5)
        pos = 9
        prefix = b""
        if req.kind == EXTENDED:
            name, pos = _string(raw, 9)
            if name not in HANDLE_EXTENSIONS:
                return raw
            prefix = _pack_string(name)
        guest, end = _string(raw, pos)
        h = self._handles.get(guest)
        if h is None:
            return raw  # not one of ours: the server says what it makes of it
        req.handle = guest
        if h.server is None:
            self._answer(status(req_id, FX_OK if req.kind == CLOSE else FX_NO_SUCH_FILE, "lost while saved"))
            if req.kind == CLOSE:
                del self._handles[guest]
            return b""
        if req.kind == READDIR and h.eof:
            self._answer(status(req_id, FX_EOF, ""))
            return b""
        body = bytes([req.kind]) + struct.pack(">I", req_id) + prefix + _pack_string(h.server) + raw[end:]
        return _packet(body)

    async def _from_server(self) -> None:
        assert self._guest_w is not None
        try:
            while True:
                raw = await self._read_server_packet()
                # Frozen, a reply waits here, its request still in flight: served again after a restore, or
                # passed on once a snapshot is taken.
                await self._thawed.wait()
                self._from_server_packet(raw)
                await self._guest_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self._server_gone()

    def _server_gone(self) -> None:
        """The server exited: each request it had, and each from now on, gets an error rather than no answer."""
        if not self.dead:
            log.warning("mount %d: sftp-server exited", self.index)
            self.dead = f"{self.location}: the host's sftp-server exited"
        for req_id in list(self._inflight):
            self._answer(status(req_id, FX_FAILURE, self.dead))
        self._inflight.clear()
        self._idle.set()

    def _from_server_packet(self, raw: bytes) -> None:
        kind = raw[4]
        if kind == VERSION:
            self._answer(raw)
            return
        (req_id,) = struct.unpack_from(">I", raw, 5)
        req = self._inflight.pop(req_id, None)
        if not self._inflight:
            self._idle.set()
        if req is None:
            log.warning("mount %d: a reply to request %d, which the relay does not know", self.index, req_id)
            return
        if kind == HANDLE and req.opens is not None:
            server, _ = _string(raw, 9)
            req.opens.server = server
            guest = struct.pack(">Q", self._next_handle)
            self._next_handle += 1
            self._handles[guest] = req.opens
            raw = _packet(bytes([HANDLE]) + struct.pack(">I", req_id) + _pack_string(guest))
        elif req.handle is not None and req.handle in self._handles:
            if req.kind == CLOSE:
                del self._handles[req.handle]
            elif req.kind == READDIR and kind == STATUS and struct.unpack_from(">I", raw, 9)[0] == FX_EOF:
                self._handles[req.handle].eof = True
        self._answer(raw)

    def _answer(self, raw: bytes) -> None:
        assert self._guest_w is not None
        self._guest_w.write(raw)

    # -- saves ----------------------------------------------------------------------------------------------
    async def hold(self, timeout: float = 10.0) -> None:
        """Before the VM stops for a save: the server finishes what it has, the guest has every reply, and new
        requests wait.  (Directory listings under way finish too: a listing is one operation of sshfs's.)"""
        self._holding = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._inflight:
            log.warning(
                "mount %d: %d requests still being served; they are served again after a restore",
                self.index,
                len(self._inflight),
            )
        self._thawed.clear()
        await self._delivered(timeout)

    async def _delivered(self, timeout: float) -> None:
        """Until QEMU has read everything written to the channel (it puts what it reads into the guest's
        buffers at once)."""
        assert self._guest_w is not None
        with contextlib.suppress(ConnectionError):
            await self._guest_w.drain()
        sock = self._guest_w.get_extra_info("socket")
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        buf = bytearray(4)
        while loop.time() < end:
            try:
                fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            except OSError:
                return
            if struct.unpack("i", buf)[0] == 0:
                return
            await asyncio.sleep(0.001)
        log.warning("mount %d: the guest did not take the last replies within %.0f s", self.index, timeout)

    async def release(self) -> None:
        """After a save that did not stop the VM (a snapshot, or a save that failed): carry on."""
        self._thawed.set()
        while self._parked:  # in order, and before anything the guest sends from now on
            await self._to_server(self._parked.pop(0))
        self._holding = False

    async def export(self, final: bool) -> dict[str, Any]:
        """The session's host side as the saved VM left it; ``final``: QEMU has quit, so the channel is read to
        its end (what QEMU passed on from the guest before it quit belongs to the state)."""
        assert self._guest_r is not None
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[0]
        while True:
            try:
                data = await asyncio.wait_for(self._guest_r.read(1 << 16), 2.0 if final else 0.01)
            except (TimeoutError, ConnectionError):
                break
            if not data:
                break
            self._inbuf += data
        pending = b"".join(r.raw for r in self._inflight.values()) + b"".join(self._parked) + bytes(self._inbuf)
        if not final:
            self._tasks[0] = asyncio.ensure_future(self._from_guest())
        return {
            "location": str(self.location),
            "initialized": self.initialized,
            "nextHandle": self._next_handle,
            "handles": {k.hex(): h.record() for k, h in self._handles.items()},
            "pending": base64.b64encode(pending).decode(),
        }

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._guest_w is not None:
            self._guest_w.close()
        if self._server is not None and self._server.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._server.kill()
            await self._server.wait()

    @property
    def open_handles(self) -> int:
        """The files and directories the guest holds open through this mount."""
        return len(self._handles)


# Runs the guest's mounts script (the default guest's, or the one cloud-init's boot command wrote) as root.
GUEST_SCRIPT = 'for s in /lib/torpor/mounts /run/torpor/mount.sh; do [ -f "$s" ] && exec sh "$s" "$@"; done'


# The mount types a save cannot carry: the guest unmounts them before and mounts them again after.
REMOUNTED = ("9p", "virtiofs")


class MountSet:
    """The instance's mounts in the order of the configuration's ``mounts``: a relay each (reverse-sshfs), or
    QEMU's 9p exports or virtiofs devices, which the guest unmounts for a save and mounts again after (through
    ``agent``); the driver takes virtiofs devices out of the VM meanwhile (``shares``)."""

    def __init__(self, agent: GuestAgent | None = None) -> None:
        self.agent = agent
        self.relays: list[Relay] = []
        self.config: list[dict[str, Any]] = []
        self.mount_type = "reverse-sshfs"
        self.shares: Shares | None = None
        self._stopped: dict[str, list[str]] = {}  # 9p, virtiofs: the processes stopped to unmount, by mount point
        self._lost: list[str] = []
        self._resuming: asyncio.Future[list[None]] | None = None

    async def attach(
        self,
        inst_dir: Path,
        mounts: list[dict[str, Any]],
        saved: list[dict[str, Any]] | None,
        channels: tuple[socket.socket, ...] = (),
        *,
        mount_type: str = "reverse-sshfs",
        shares: Shares | None = None,
    ) -> None:
        """While the VM has not run: each mount's channel and server; ``saved``: the sessions a save left;
        ``channels``: connected already (the early restore path); ``shares``: the driver, for virtiofs."""
        from torpor.store import filenames

        self.config, self.mount_type, self.shares = mounts, mount_type, shares
        if mount_type in REMOUNTED:
            for m, rec in zip(mounts, saved or [], strict=False):
                for proc in rec["stopped"]:
                    point = m["mountPoint"]
                    self._lost.append(
                        f"process {proc} (stopped at the save: it kept the {mount_type} mount {point} busy)"
                    )
            return
        for i, m in enumerate(mounts):
            relay = Relay(i, Path(m["location"]), bool(m["writable"]), inst_dir / filenames.mount_sock(i))
            self.relays.append(relay)
            if saved is None:
                await relay.connect()
            else:
                await relay.adopt(channels[i] if i < len(channels) else None)
        if saved is not None and self.relays:
            # The servers and their sessions come up while the VM runs and SSH connects (the guest's requests
            # wait in the channels meanwhile): they are off the restore's critical path.
            sessions = (r.resume_session(saved[i]) for i, r in enumerate(self.relays))
            self._resuming = asyncio.ensure_future(asyncio.gather(*sessions))

    async def ready(self) -> None:
        """Until the sessions of a restore are back (a restore waits for it before it reports ready)."""
        if self._resuming is not None:
            await self._resuming

    @property
    def lost(self) -> list[str]:
        return self._lost + [item for r in self.relays for item in r.lost]

    async def hold(self, stop_processes: bool = True) -> None:
        """Before the VM is paused for a save.  9p and virtiofs mounts are unmounted (and virtiofs devices
        unplugged); a busy one is freed by stopping the processes that use it if ``stop_processes`` (a save), else
        it is an error (a snapshot, after which the VM goes on: nothing is stopped, the mounts are mounted again)."""
        if self.mount_type in REMOUNTED:
            if self.config:
                await self._unmount(stop_processes)
            return
        await self.ready()
        await asyncio.gather(*(r.hold() for r in self.relays))

    async def release(self) -> None:
        """After a save that did not stop the VM (a snapshot, or a save that failed)."""
        if self.mount_type in REMOUNTED:
            await self.mount_again()
            return
        await asyncio.gather(*(r.release() for r in self.relays))

    async def export(self, final: bool) -> list[dict[str, Any]]:
        if self.mount_type in REMOUNTED:
            return [{"stopped": self._stopped.get(m["mountPoint"], [])} for m in self.config]
        return list(await asyncio.gather(*(r.export(final) for r in self.relays)))

    async def mount_again(self) -> None:
        """Once a restored VM runs (or after a snapshot): its 9p and virtiofs mounts are mounted again."""
        if self.mount_type not in REMOUNTED or not self.config or self.agent is None:
            return
        if self.shares is not None:
            try:
                await self.shares.attach_shares()
            except TorporError as e:
                self._lost.append(f"the {self.mount_type} mounts (their devices could not be plugged in: {e})")
                return
        code, out = await self.agent.run(["/bin/sh", "-c", GUEST_SCRIPT, "mounts"], timeout=60)
        if code != 0:
            self._lost.append(f"the {self.mount_type} mounts (mounting them again failed: {out.strip()})")

    async def _unmount(self, stop_processes: bool) -> None:
        self._stopped = await self._release(stop_processes)
        if self.shares is None:
            return
        try:
            await self.shares.detach_shares()
        except TorporError as e:
            log.warning("taking the %s devices out for the save failed: %s", self.mount_type, e)
            await self.mount_again()
            raise

    async def _release(self, stop_processes: bool) -> dict[str, list[str]]:
        assert self.agent is not None
        how = "--release" if stop_processes else "--release-idle"
        code, out = await self.agent.run(["/bin/sh", "-c", GUEST_SCRIPT, "mounts", how], timeout=60)
        stopped: dict[str, list[str]] = {}
        for line in out.splitlines():
            point, sep, proc = line.partition("\t")
            if sep:
                stopped.setdefault(point, []).append(proc)
        kind = self.mount_type
        if code == 3:
            await self.mount_again()
            busy = "; ".join(f"{point} by {', '.join(procs)}" for point, procs in stopped.items())
            raise TorporError(
                f"a {kind} mount is in use ({busy}), and QEMU cannot take a snapshot while one is mounted",
                hint="end what uses it, or use mountType: reverse-sshfs, whose mounts snapshots keep",
            )
        if code != 0:  # (a mount left in place would die with its device, or refuse the save)
            await self.mount_again()
            raise TorporError(f"the guest could not unmount its {kind} mounts: {out.strip() or f'exit code {code}'}")
        for point, procs in stopped.items():
            log.warning("%s mount %s was busy; stopped %s so that the VM could be saved", kind, point, ", ".join(procs))
        return stopped

    async def close(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()
        await asyncio.gather(*(r.close() for r in self.relays))
        self.relays = []

    def info(self, mounted: set[str] | None) -> list[dict[str, Any]]:
        """Each mount for the API; ``mounted``: the guest's mount points that are mounted (None: unknown)."""
        out = []
        for i, m in enumerate(self.config):
            point = m["mountPoint"]
            relay = self.relays[i] if i < len(self.relays) else None
            up = (relay is None or (relay.initialized and not relay.lost)) and (mounted is None or point in mounted)
            out.append(
                {
                    "location": m["location"],
                    "mountPoint": point,
                    "writable": m["writable"],
                    "mountType": self.mount_type,
                    "up": up,
                    **({"openFiles": relay.open_handles} if relay is not None else {}),
                }
            )
        return out


def guest_mount_points(proc_mounts: str) -> set[str]:
    """The mount points of sshfs, 9p and virtiofs mounts in the guest's /proc/mounts (its octal escapes undone)."""
    out = set()
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] in ("fuse.sshfs", *REMOUNTED):
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    return out
