"""What operators see of read routing: SHOW REPLICAS rows, SHOW SERVERS' role/lag/state columns and the Prometheus families."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.routing.health import OPEN, ServerState

REPLICA_COLUMNS = (
    "server",
    "kind",
    "role",
    "up",
    "breaker",
    "lsn",
    "lag_bytes",
    "lag_ms",
    "lagging",
    "outstanding",
    "routed",
    "last_error",
)
BREAKER_STATES = ("closed", "open", "half_open")


class Servers(Protocol):
    """The monitor's view, as read here."""

    @property
    def servers(self) -> Sequence[ServerState]: ...
    @property
    def primary(self) -> ServerState | None: ...
    @property
    def failovers(self) -> int: ...


class Routed(Protocol):
    @property
    def routed(self) -> Mapping[str, int]: ...


class Failures(Protocol):
    @property
    def failures(self) -> int: ...


class ReplicationSource(Protocol):
    """The server's read routing, as the console and the metrics read it."""

    @property
    def monitor(self) -> Servers: ...
    @property
    def routing(self) -> Routed: ...
    @property
    def watermarks(self) -> Failures: ...


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def replica_rows(monitor: Servers) -> list[list[object]]:
    """One row per server pgwarden knows (primary candidates and replicas), for SHOW REPLICAS."""
    rows: list[list[object]] = []
    for s in monitor.servers:
        rows.append(
            [
                s.name,
                s.kind,
                "primary (chosen)" if s is monitor.primary else s.role,
                "yes" if s.up else "no",
                s.breaker.state,
                _lsn(s.lsn) if s.lsn else None,
                s.lag_bytes,
                None if s.lag_ms is None else round(s.lag_ms, 1),
                ("yes" if s.lagging() else "no") if s.kind == "replica" else None,
                s.outstanding,
                s.routed,
                s.last_error,
            ]
        )
    return rows


def server_columns(monitor: Servers | None, address: tuple[str, int]) -> list[object]:
    """SHOW SERVERS' role, lag and state of the server a backend is connected to."""
    if monitor is None:
        return ["primary", None, "up"]
    for s in monitor.servers:
        if (s.host, s.port) == address:
            role = "primary" if s is monitor.primary else ("replica" if s.kind == "replica" else s.role)
            state = "open" if s.breaker.state == OPEN else ("up" if s.up else "down")
            return [role, s.lag_bytes, state]
    return ["unknown", None, "unknown"]


def families(monitor: Servers, routing: Routed, watermark_failures: int) -> Iterator[Metric]:
    """The read-routing families, read at scrape time."""
    up = GaugeMetricFamily(
        "pgwarden_server_up", "1 when the last health check of a server passed", labels=["server", "kind"]
    )
    role = GaugeMetricFamily("pgwarden_server_is_primary", "1 for the server that takes writes now", labels=["server"])
    lag_bytes = GaugeMetricFamily(
        "pgwarden_replica_lag_bytes", "Replay lag of a replica in WAL bytes", labels=["server"]
    )
    lag_s = GaugeMetricFamily("pgwarden_replica_lag_seconds", "Replay delay of a replica", labels=["server"])
    breaker = GaugeMetricFamily(
        "pgwarden_server_breaker",
        "Circuit breaker state of a server (1 for the current one)",
        labels=["server", "state"],
    )
    opened = CounterMetricFamily("pgwarden_server_breaker_opened", "Times a server's breaker opened", labels=["server"])
    routed = CounterMetricFamily("pgwarden_server_routed", "Transactions routed to a replica", labels=["server"])
    outstanding = GaugeMetricFamily(
        "pgwarden_server_outstanding", "Transactions in flight on a replica", labels=["server"]
    )
    for s in monitor.servers:
        up.add_metric([s.name, s.kind], 1 if s.up else 0)
        role.add_metric([s.name], 1 if s is monitor.primary else 0)
        for state in BREAKER_STATES:
            breaker.add_metric([s.name, state], 1 if s.breaker.state == state else 0)
        opened.add_metric([s.name], s.breaker.opened)
        if s.kind == "replica":
            if s.lag_bytes is not None:
                lag_bytes.add_metric([s.name], s.lag_bytes)
            if s.lag_ms is not None:
                lag_s.add_metric([s.name], s.lag_ms / 1000)
            routed.add_metric([s.name], s.routed)
            outstanding.add_metric([s.name], s.outstanding)
    yield from (up, role, lag_bytes, lag_s, breaker, opened, routed, outstanding)
    routes = CounterMetricFamily("pgwarden_routed", "Transactions by where they ran", labels=["route"])
    for name, n in sorted(routing.routed.items()):
        routes.add_metric([name], n)
    yield routes
    failovers = CounterMetricFamily("pgwarden_failovers", "Times the primary moved to another host")
    failovers.add_metric([], monitor.failovers)
    yield failovers
    store = CounterMetricFamily(
        "pgwarden_watermark_store_failures", "Shared watermark reads or writes that failed (reads went to the primary)"
    )
    store.add_metric([], watermark_failures)
    yield store
