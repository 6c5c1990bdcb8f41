"""The CLI's client for the host agent's API on its unix socket (synchronous, standard library only)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from torpor.errors import HostAgentError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(str(self._path))
        self.sock = s


class HostAgentClient:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send a request and return ``(status, decoded JSON body)``; transport failures raise."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            raise HostAgentError(f"cannot reach the host agent at {self.socket_path}: {e}") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            raise HostAgentError(f"the host agent sent a response that is not JSON: {data[:200]!r}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request and return the decoded body of a 200; any other status raises with the agent's message."""
        status, reply = self.request(method, path, body)
        if status != 200:
            msg = reply.get("message") if isinstance(reply, dict) else reply
            raise HostAgentError(f"host agent: {msg} (HTTP {status})")
        return reply

    def get(self, path: str) -> Any:
        return self.call("GET", path)
