"""The HTTP listener for operators: /healthz (alive), /readyz (able to serve), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from proxy.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from proxy.server import Server

log = logging.getLogger("pgwarden.http")
JSON = "application/json"


class HttpServer:
    """A minimal HTTP/1.1 server: GET only, one response per connection."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self._listener: asyncio.AbstractServer | None = None
        self._primary_checked = 0.0
        self._primary_ok = False

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
            status, ctype, body = await self.route(method.decode(), path.decode().split("?")[0])
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", JSON, _json({"error": "only GET is served"})
        server = self.server
        if path == "/healthz":
            return "200 OK", JSON, _json({"status": "ok", "uptime_s": round(time.time() - server.started, 1),
                                          "clients": server.client_count(), "draining": server.draining})
        if path == "/readyz":
            checks = await self.readiness()
            ready = all(checks.values())
            return ("200 OK" if ready else "503 Service Unavailable"), JSON, _json(
                {"ready": ready, "checks": checks})
        if path == "/metrics":
            server.metrics.primary_up.set(1 if await self._primary_reachable() else 0)
            return "200 OK", CONTENT_TYPE, server.metrics.exposition()
        return "404 Not Found", JSON, _json({"error": f"no such endpoint {path}",
                                             "endpoints": ["/healthz", "/readyz", "/metrics"]})

    async def readiness(self) -> dict[str, bool]:
        """Policies loaded (when configured), primary reachable, not draining, audit writable."""
        server = self.server
        checks = {"accepting": not server.draining,
                  "policies_loaded": server.config.policies is None or server.router is not None,
                  "primary_reachable": await self._primary_reachable()}
        audit = getattr(server, "audit", None)
        if audit is not None:
            checks["audit_writable"] = audit.writable()
        return checks

    async def _primary_reachable(self) -> bool:
        """A TCP connect to the primary within 1 s, remembered for 2 s."""
        now = time.monotonic()
        if now - self._primary_checked < 2:
            return self._primary_ok
        primary = self.server.config.primary
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(primary.host, primary.port), 1)
            writer.close()
            self._primary_ok = True
        except (OSError, asyncio.TimeoutError):
            self._primary_ok = False
        self._primary_checked = now
        return self._primary_ok


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()
