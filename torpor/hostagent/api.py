"""The host agent's HTTP/1.1 server on its unix socket (mode 0600), parsed by ``h11``.

Each request is answered with JSON and the connection closed; errors carry ``{"message": ...}``.  Handlers get
the parsed request and return ``(status, body)`` or raise :class:`HTTPError`.  Whatever a client sends, the
answer is a status with a JSON message: a malformed request 400, a body without a length 411, one too large 413,
headers too large 431; a client that sends nothing is dropped after :data:`READ_TIMEOUT` seconds, and each
connection is served on its own, so none holds up another (or a stop).

h11 is imported with the first request, not with the agent: a restore's critical path never waits for it.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import h11

log = logging.getLogger(__name__)

MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024
READ_TIMEOUT = 30.0
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
        try:
            status, body = await self._answer(conn, reader)
        except TimeoutError:
            status, body = 408, {"message": f"no complete request within {READ_TIMEOUT:.0f} s"}
        except ConnectionError:
            writer.close()
            return
        await _respond(conn, writer, status, body)

    async def _answer(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, Any]:
        import h11

        try:
            request = await _read_request(conn, reader)
            return await self._dispatch(request)
        except HTTPError as e:
            return e.status, {"message": e.message}
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint if e.error_status_hint in (400, 413, 431) else 400
            return status, {"message": f"malformed request: {e}"}
        except Exception as e:
            log.exception("API handler failed")
            return 500, {"message": f"internal error: {e}"}

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            allowed = sorted(m for m, p in self.routes if p == request.path)
            if allowed:
                raise HTTPError(405, f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}")
            raise HTTPError(404, f"no such endpoint: {request.path}")
        return await handler(request)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request:
    """The next request on ``conn``, with its whole body (at most :data:`MAX_BODY` bytes)."""
    import h11

    head = await _next_event(conn, reader)
    if not isinstance(head, h11.Request):
        raise HTTPError(400, "malformed request")
    if sum(len(k) + len(v) for k, v in head.headers) > MAX_HEADER:  # h11 bounds only a head still arriving
        raise HTTPError(431, f"request headers too large (at most {MAX_HEADER} bytes)")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    method = head.method.decode("ascii", errors="replace")
    length = headers.get("content-length")
    if length is not None and int(length) > MAX_BODY:  # h11 has checked that it is a number
        raise HTTPError(413, f"request body too large (at most {MAX_BODY} bytes)")
    if method in BODY_METHODS and length is None and "transfer-encoding" not in headers:
        raise HTTPError(411, "a request with a body needs a Content-Length header")
    body = bytearray()
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise HTTPError(413, f"request body too large (at most {MAX_BODY} bytes)")
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise HTTPError(400, "malformed request")
    target = head.target.decode("ascii", errors="replace")
    return Request(method, target.split("?", 1)[0], headers, bytes(body))


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    import h11

    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
            conn.receive_data(data)  # b"": the client closed its side
            continue
        if isinstance(event, h11.ConnectionClosed):
            raise HTTPError(400, "the client closed the connection before the request was complete")
        return event


async def _respond(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    import h11

    payload = json.dumps(body).encode() + b"\n"
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), ("Connection", "close")]
    try:
        if conn.their_state is h11.ERROR or conn.our_state is not h11.SEND_RESPONSE:
            # The request could not be parsed: answer outside the state machine, which no longer can.
            head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
            writer.write(head.encode() + payload)
        else:
            writer.write(
                conn.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)) or b""
            )
            writer.write(conn.send(h11.Data(data=payload)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
    except (ConnectionError, h11.LocalProtocolError) as e:
        log.debug("answering an API request: %s", e)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
