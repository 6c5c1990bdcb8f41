"""A small HTTP/1.1 server for the host agent's unix socket (mode 0600).

Each request is answered with JSON; errors carry ``{"message": ...}``.  Handlers get the parsed request and
return ``(status, body)`` or raise :class:`HTTPError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body:
            raise HTTPError(400, "the request needs a JSON body")
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HTTPError(400, f"the body is not valid JSON: {e}") from None


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


class APIServer:
    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # The umask makes the socket 0600 from the moment it exists, not just after a chmod.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._handle(reader)
        except HTTPError as e:
            status, body = e.status, {"message": e.message}
        except Exception as e:
            log.exception("API handler failed")
            status, body = 500, {"message": f"internal error: {e}"}
        payload = json.dumps(body).encode() + b"\n"
        reason = HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + payload)
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HTTPError(400, "malformed request") from None
        if len(head) > MAX_HEADER:
            raise HTTPError(431, "request header too large")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise HTTPError(400, "malformed request line") from None
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            raise HTTPError(413, "request body too large")
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        handler = self.routes.get((method, path))
        if handler is None:
            if any(p == path for _, p in self.routes):
                allowed = sorted(m for m, p in self.routes if p == path)
                raise HTTPError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
            raise HTTPError(404, f"no such endpoint: {path}")
        return await handler(Request(method, path, headers, body))
