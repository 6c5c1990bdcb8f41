"""The CLI's client for the host agent's API on its unix socket (synchronous, standard library only).

It speaks just the HTTP/1.1 that the agent's server (api.py) does: one request per connection, a JSON body
with Content-Length, and a response the server ends by closing the connection.  (http.client would cost each
command 15 ms of imports: email, ssl.)
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from torpor.errors import HostAgentError

TYPE_CHECKING = False  # not typing's (see events.py)
if TYPE_CHECKING:
    from typing import Any


class HostAgentClient:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send a request and return ``(status, decoded JSON body)``; transport failures raise."""
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.socket_path))
                s.sendall(head.encode() + b"\r\n" + payload)
                response = b"".join(iter(lambda: s.recv(65536), b""))
        except OSError as e:
            raise HostAgentError(f"cannot reach the host agent at {self.socket_path}: {e}") from None
        status_line, _, rest = response.partition(b"\r\n")
        _, _, data = rest.partition(b"\r\n\r\n")
        try:
            status = int(status_line.split()[1])
            return status, json.loads(data) if data else None
        except (IndexError, ValueError):
            raise HostAgentError(
                f"the host agent sent a response that is not HTTP with JSON: {response[:200]!r}"
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request and return the decoded body of a 200; any other status raises with the agent's message."""
        status, reply = self.request(method, path, body)
        if status != 200:
            msg = reply.get("message") if isinstance(reply, dict) else reply
            raise HostAgentError(f"host agent: {msg} (HTTP {status})")
        return reply

    def get(self, path: str) -> Any:
        return self.call("GET", path)
