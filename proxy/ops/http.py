"""The HTTP listener for operators: /healthz (alive), /readyz (able to serve), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from proxy.ops.metrics import CONTENT_TYPE, merge_expositions
from proxy.wire import protocol

if TYPE_CHECKING:
    from proxy.audit.process import AuditProcess
    from proxy.config.model import Config
    from proxy.enforce.router import Router
    from proxy.ops.metrics import Metrics
    from proxy.ops.replicas_view import ReplicationSource

log = logging.getLogger("pgwarden.http")
JSON = "application/json"


class HttpSource(Protocol):
    """What the endpoints read of the server: its config, liveness, readiness and metrics."""

    @property
    def config(self) -> Config: ...
    @property
    def started(self) -> float: ...
    @property
    def draining(self) -> bool: ...
    @property
    def router(self) -> Router | None: ...
    @property
    def audit(self) -> AuditProcess | None: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def replication(self) -> ReplicationSource | None: ...

    def client_count(self) -> int: ...


class PeerReport(NamedTuple):
    """What another worker process reports for the whole proxy's /healthz and /metrics."""

    worker: int
    clients: int
    exposition: bytes


class HttpServer:
    """A minimal HTTP/1.1 server: GET only, one response per connection.

    With several workers, one of them serves it and `peers` gathers the others' reports:
    /healthz counts every worker's clients, /metrics labels each sample with its `worker`.
    """

    def __init__(
        self, server: HttpSource, peers: Callable[[], Awaitable[list[PeerReport]]] | None = None, worker: int = 0
    ) -> None:
        self.server = server
        self.peers = peers
        self.worker = worker  # this process's worker index, when there are peers
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
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", JSON, _json({"error": "only GET is served"})
        server = self.server
        reports = await self.peers() if self.peers is not None and path in ("/healthz", "/metrics") else []
        if path == "/healthz":
            return (
                "200 OK",
                JSON,
                _json(
                    {
                        "status": "ok",
                        "uptime_s": round(time.time() - server.started, 1),
                        "clients": server.client_count() + sum(r.clients for r in reports),
                        "draining": server.draining,
                        **({"workers": 1 + len(reports)} if self.peers is not None else {}),
                    }
                ),
            )
        if path == "/readyz":
            checks = await self.readiness()
            ready = all(checks.values())
            return ("200 OK" if ready else "503 Service Unavailable"), JSON, _json({"ready": ready, "checks": checks})
        if path == "/metrics":
            server.metrics.primary_up.set(1 if await self._primary_reachable() else 0)
            if self.peers is None:
                return "200 OK", CONTENT_TYPE, server.metrics.exposition()
            parts = [(str(self.worker), server.metrics.exposition())]
            parts += [(str(r.worker), r.exposition) for r in sorted(reports)]
            return "200 OK", CONTENT_TYPE, merge_expositions(parts)  # this worker's primary_up, measured now
        return (
            "404 Not Found",
            JSON,
            _json({"error": f"no such endpoint {path}", "endpoints": ["/healthz", "/readyz", "/metrics"]}),
        )

    async def readiness(self) -> dict[str, bool]:
        """Policies loaded (when configured), primary reachable, not draining, audit writable."""
        server = self.server
        checks = {
            "accepting": not server.draining,
            "policies_loaded": server.config.policies is None or server.router is not None,
            "primary_reachable": await self._primary_reachable(),
        }
        audit = getattr(server, "audit", None)
        if audit is not None:
            checks["audit_writable"] = audit.writable()
        return checks

    async def _primary_reachable(self) -> bool:
        """The primary answers as PostgreSQL within 1 s (see `postgres_answers`), remembered for 2 s."""
        now = time.monotonic()
        if now - self._primary_checked < 2:
            return self._primary_ok
        replication = self.server.replication
        if replication is not None:  # the monitor knows which host is the primary now (after a failover too)
            chosen = replication.monitor.primary
            self._primary_ok, self._primary_checked = chosen is not None and chosen.up, now
            return self._primary_ok
        primary = self.server.config.primary
        user = self.server.config.backend_auth.user or "pgwarden"
        try:
            self._primary_ok = await asyncio.wait_for(postgres_answers(primary.host, primary.port, user), 1)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            self._primary_ok = False
        self._primary_checked = now
        return self._primary_ok


# SQLSTATE classes that mean "this PostgreSQL does not take connections now": 57 (starting
# up, shutting down, in recovery without hot standby), 53 (too many connections), 08.
_NOT_SERVING = ("57", "53", "08")


async def postgres_answers(host: str, port: int, user: str) -> bool:
    """Does host:port answer a startup packet as a PostgreSQL that takes logins?

    An open port is not enough (a load balancer, a port-forward, a server still starting
    up). An authentication request counts, and so does a login error such as a wrong user
    or a pg_hba.conf refusal (the server is up); "the database system is starting up" and
    "too many connections" do not.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(protocol.startup_message({"user": user, "database": "postgres"}))
        header = await reader.readexactly(5)
        if header[:1] == b"R":
            return True
        if header[:1] != b"E":
            return False
        body = await reader.readexactly(int.from_bytes(header[1:5], "big") - 4)
        return protocol.decode_fields(header + body).get("sqlstate", "")[:2] not in _NOT_SERVING
    finally:
        writer.close()


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()
