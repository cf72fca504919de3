"""What a client session needs of the process: config, pools, router, registries and sinks (not the Server)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.audit.process import AuditProcess
from proxy.config.model import Config
from proxy.enforce.router import Router
from proxy.limits.limiter import Limiter
from proxy.ops.admin import AdminConsole
from proxy.ops.metrics import Metrics
from proxy.ops.slowlog import SlowLog
from proxy.ops.stats import QueryStats
from proxy.pooling.backend import Backend
from proxy.pooling.pool import Pool
from proxy.pooling.prepared import Registry
from proxy.session.caching import Caching
from proxy.session.replicas import ReadRouting


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Built by the server for each new client. Values that a reload or shutdown swaps (the
    router, the listener's TLS context, draining) are read through the functions given.
    `Any` stands for the session itself, which the server keeps in its table of clients."""

    config: Config  # the snapshot in force when the client connected
    statements: Registry  # proxy-wide prepared statements (transaction pooling)
    stats: QueryStats
    slowlog: SlowLog | None
    audit: AuditProcess | None
    metrics: Metrics
    router: Callable[[], Router | None]
    tls_context: Callable[[], ssl.SSLContext | None]
    draining: Callable[[], bool]
    issue_key: Callable[[Any], tuple[int, int]]  # registers the client: its BackendKeyData
    forget: Callable[[Any], None]
    client_count: Callable[[], int]
    cancel: Callable[[int, int], asyncio.Task | None]
    pool_for: Callable[[str, str, bool], Pool]  # (database, user, policed)
    ensure_schema: Callable[[Any, str], Awaitable[bool]]
    refresh_schemas: Callable[[str], None]
    admin_console: Callable[[], AdminConsole]
    read_routing: ReadRouting | None = (
        None  # with `replicas` (or several primary hosts): transaction pooling routes reads
    )
    limits: Limiter | None = None  # `limits:` (the process's limiter)
    caching: Caching | None = None  # `cache:` (the process's result cache)


class Shell(Protocol):
    """What a session's core (`core.SessionCore`) asks of the connection around it."""

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close the client."""

    def close(self, reason: str) -> None:
        """Close the client."""

    def detach(self, backend: Backend) -> None:
        """The backend is no longer needed (between transactions): give it back to its pool."""
