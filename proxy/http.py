"""The HTTP listener for operators: /healthz (the process is alive)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.server import Server

log = logging.getLogger("pgwarden.http")


class HttpServer:
    """A minimal HTTP/1.1 server: GET only, one response per connection."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self._listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        http = self.server.config.http
        if http.port:
            self._listener = await asyncio.start_server(self._handle, http.host, http.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = request.split(b" ", 2)[:2]
            status, body = self.route(method.decode(), path.decode().split("?")[0])
            payload = json.dumps(body).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                         + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    def route(self, method: str, path: str) -> tuple[str, dict]:
        if method != "GET":
            return "405 Method Not Allowed", {"error": "only GET is served"}
        if path == "/healthz":
            server = self.server
            return "200 OK", {"status": "ok", "uptime_s": round(time.time() - server.started, 1),
                              "clients": server.client_count(), "draining": server.draining}
        return "404 Not Found", {"error": f"no such endpoint {path}", "endpoints": ["/healthz"]}
