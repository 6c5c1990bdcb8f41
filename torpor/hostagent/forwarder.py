"""Automatic port forwarding: poll the guest's listening sockets and keep host forwards in step with them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from torpor.guest.agent import GuestAgent, GuestAgentError
from torpor.hostagent.ports import Forward, Rule, listeners, plan
from torpor.hostagent.sshaccess import SSHAccess

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


class PortForwarder:
    def __init__(
        self, agent: GuestAgent, access: SSHAccess, rules: list[Rule], emit: Callable[[str, str], None]
    ) -> None:
        self.agent = agent
        self.access = access
        self.rules = rules
        self.emit = emit
        self.active: set[Forward] = set()
        self.failed: set[Forward] = set()  # not retried until the guest port closes and opens again

    async def guest_ports(self) -> dict[int, bool]:
        """The ports the guest listens on (loopback or wildcard), each with whether it is on the wildcard."""
        text = ""
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                text += (await self.agent.read_file(path)).decode(errors="replace")
            except GuestAgentError as e:
                if path.endswith("tcp"):
                    raise
                log.debug("reading %s: %s", path, e)
        return listeners(text)

    async def sync_once(self) -> None:
        found = await self.guest_ports()
        wanted = plan(set(found), self.rules, {port for port, wildcard in found.items() if wildcard})
        self.failed &= wanted
        for fwd in sorted(self.active - wanted):
            await self.access.cancel(fwd.spec())
            self.active.discard(fwd)
            self.emit("port-forward", f"stopped forwarding {fwd}")
        for fwd in sorted(wanted - self.active - self.failed):
            problem = await self.access.forward(fwd.spec())
            if problem is None:
                self.active.add(fwd)
                self.emit("port-forward", f"forwarding {fwd}")
            else:
                self.failed.add(fwd)
                self.emit("notice", f"cannot forward {fwd}: {problem}")

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except GuestAgentError as e:
                log.debug("port poll: %s", e)
            await asyncio.sleep(POLL_INTERVAL)
