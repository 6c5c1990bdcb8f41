"""Which guest ports to forward to which host addresses: Lima's ``portForwards`` rules over the guest's
listening TCP sockets (read from ``/proc/net/tcp*`` through the guest agent).

Rules are tried in order and the first that matches a port decides; a port no rule matches is forwarded to the
same port on 127.0.0.1.  Nothing binds anything but loopback unless a rule names another hostIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SSH_PORT = 22
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Rule:
    """One ``portForwards`` rule, read from the JSON of a configuration the schema validated (``PortForward``)."""

    guest_port: int | None
    guest_port_range: tuple[int, int] | None
    host_ip: str
    host_port: int | None
    ignore: bool
    host_port_range: tuple[int, int] | None = None
    wildcard_only: bool = False  # guestIPMustBeZero: only a port the guest listens on at 0.0.0.0 or ::

    @classmethod
    def from_record(cls, rule: dict[str, Any]) -> Rule:
        def pair(v: Any) -> tuple[int, int] | None:
            return (int(v[0]), int(v[1])) if v is not None else None

        return cls(
            rule["guestPort"],
            pair(rule["guestPortRange"]),
            str(rule["hostIP"]),
            rule["hostPort"],
            bool(rule["ignore"]),
            pair(rule.get("hostPortRange")),
            bool(rule.get("guestIPMustBeZero")),
        )


@dataclass(frozen=True, order=True)
class Forward:
    host_ip: str
    host_port: int
    guest_port: int

    def spec(self) -> str:
        """The ``-L`` argument of ssh for this forward."""
        return f"{self.host_ip}:{self.host_port}:127.0.0.1:{self.guest_port}"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port} -> guest port {self.guest_port}"


def listening_ports(proc_net_tcp: str) -> set[int]:
    """TCP ports in LISTEN state on a wildcard or loopback address, from /proc/net/tcp or tcp6 text."""
    return set(listeners(proc_net_tcp))


def listeners(proc_net_tcp: str) -> dict[int, bool]:
    """The TCP ports in LISTEN state on a wildcard or loopback address, each with whether one of its
    listeners is on the wildcard address."""
    ports: dict[int, bool] = {}
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_LISTEN:
            continue
        addr, _, port_hex = fields[1].partition(":")
        if _reachable_from_loopback(addr):
            port = int(port_hex, 16)
            ports[port] = ports.get(port, False) or addr.strip("0") == "" or addr == "0000000000000000FFFF000000000000"
    return ports


def _reachable_from_loopback(addr_hex: str) -> bool:
    if len(addr_hex) == 8:  # IPv4, little-endian: 0.0.0.0 or 127.x.x.x
        return addr_hex == "00000000" or addr_hex.endswith("7F")
    # IPv6: :: or ::1 (or an IPv4-mapped loopback/wildcard)
    return addr_hex in ("0" * 32, "0" * 24 + "01000000") or addr_hex.startswith("0000000000000000FFFF0000")


def plan(ports: set[int], rules: list[Rule], wildcard: set[int] | None = None) -> set[Forward]:
    """The forwards the guest's listening ``ports`` call for under ``rules``; ``wildcard``: the ports listened on
    at the wildcard address (all of them if not given)."""
    out = set()
    for port in ports:
        if port == SSH_PORT:
            continue
        on_wildcard = wildcard is None or port in wildcard
        rule = next((r for r in rules if _matches(r, port) and (on_wildcard or not r.wildcard_only)), None)
        if rule is None:
            out.add(Forward("127.0.0.1", port, port))
            continue
        if rule.ignore:
            continue
        host_port = port
        if rule.host_port_range is not None:
            low = rule.guest_port if rule.guest_port is not None else (rule.guest_port_range or (port, port))[0]
            host_port = rule.host_port_range[0] + (port - low)
        elif rule.host_port and rule.guest_port is not None:
            host_port = rule.host_port
        elif rule.host_port and rule.guest_port_range is not None:
            host_port = rule.host_port + (port - rule.guest_port_range[0])
        out.add(Forward(rule.host_ip, host_port, port))
    return out


def _matches(rule: Rule, port: int) -> bool:
    if rule.guest_port is not None:
        return rule.guest_port == port
    if rule.guest_port_range is not None:
        return rule.guest_port_range[0] <= port <= rule.guest_port_range[1]
    return True  # a rule without a port matches every port (e.g. "ignore: true" to forward nothing)
