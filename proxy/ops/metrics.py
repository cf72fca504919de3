"""Prometheus metrics: counters bumped on rare events, gauges read from the pools and sessions at scrape time."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.cache.results import ResultCache
from proxy.config.sections import MetricsConfig
from proxy.ops.cache_view import cache_families
from proxy.ops.counts import BatchHistogram, PlainCounter
from proxy.ops.replicas_view import ReplicationSource, families

if TYPE_CHECKING:
    from proxy.audit.process import AuditProcess
    from proxy.enforce.router import Router
    from proxy.pooling.backend import Backend
    from proxy.pooling.pool import Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_TENANT = "other"
disable_created_metrics()  # no *_created series: they double the output and say little


class ClientState(Protocol):
    """What the gauges read of one client session."""

    @property
    def state(self) -> str: ...
    @property
    def backend(self) -> Backend | None: ...


class MetricsSource(Protocol):
    """What the gauges read of the server at scrape time: sessions, pools, and whether it serves."""

    @property
    def sessions(self) -> Mapping[int, ClientState]: ...
    @property
    def pools(self) -> Mapping[tuple[str, str], Pool]: ...
    @property
    def draining(self) -> bool: ...
    @property
    def router(self) -> Router | None: ...
    @property
    def audit(self) -> AuditProcess | None: ...
    @property
    def replication(self) -> ReplicationSource | None: ...
    @property
    def result_cache(self) -> ResultCache | None: ...


class _StateCollector:
    """Connections and pools, read from the server when Prometheus scrapes (no per-event cost)."""

    def __init__(self, server: MetricsSource) -> None:
        self.server = server

    def collect(self):
        server = self.server
        clients = GaugeMetricFamily("pgwarden_client_connections", "Client connections by state", labels=["state"])
        counts: dict[str, int] = {}
        for session in list(server.sessions.values()):
            state = session.state if session.backend is None else "active"
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            clients.add_metric([state], n)
        yield clients
        backends = GaugeMetricFamily(
            "pgwarden_backend_connections", "Backend connections by pool and state", labels=["pool", "state"]
        )
        waiting = GaugeMetricFamily("pgwarden_pool_waiting_clients", "Clients waiting for a backend", labels=["pool"])
        waits = GaugeMetricFamily("pgwarden_pool_waits", "Clients that had to wait, since start", labels=["pool"])
        wait_s = GaugeMetricFamily("pgwarden_pool_wait_seconds", "Total seconds clients waited", labels=["pool"])
        for pool in list(server.pools.values()):
            for state, n in (("idle", len(pool.idle)), ("active", len(pool.active)), ("connecting", pool.connecting)):
                backends.add_metric([pool.name, state], n)
            waiting.add_metric([pool.name], len(pool.waiters))
            waits.add_metric([pool.name], pool.wait_count)
            wait_s.add_metric([pool.name], pool.wait_time)
        yield from (backends, waiting, waits, wait_s)
        up = GaugeMetricFamily("pgwarden_up", "1 while the proxy runs; 0 while draining")
        up.add_metric([], 0 if server.draining else 1)
        yield up
        policy = GaugeMetricFamily("pgwarden_policy_loaded", "1 when a policy is enforced")
        policy.add_metric([], 1 if server.router is not None else 0)
        yield policy
        cache = GaugeMetricFamily(
            "pgwarden_rewrite_cache_lookups", "Rewrite cache lookups of the running policy", labels=["result"]
        )
        router = server.router
        cache.add_metric(["hit"], router.hits if router else 0)
        cache.add_metric(["miss"], router.misses if router else 0)
        yield cache
        replication = server.replication
        if replication is not None:
            yield from families(replication.monitor, replication.routing, replication.watermarks.failures)
        if server.result_cache is not None:
            yield from cache_families(server.result_cache)
        audit = server.audit
        if audit is not None:
            stats = audit.stats
            for name, help_text in (
                ("queued", "Audit records waiting to be written"),
                ("written", "Audit records written since start"),
                ("dropped", "Audit records dropped (on_failure: drop)"),
            ):
                family = GaugeMetricFamily(f"pgwarden_audit_{name}", help_text)
                family.add_metric([], stats[name])
                yield family
            failing = GaugeMetricFamily("pgwarden_audit_sink_failing", "1 while the sink fails")
            failing.add_metric([], 1 if stats["failures"] else 0)
            yield failing


class Metrics:
    """Every metric pgwarden exports, on a private registry. Labels never carry SQL text."""

    def __init__(self, server: MetricsSource, config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        self.registry = CollectorRegistry()
        reg = self.registry
        self.statements = PlainCounter(  # (once per policed statement: no lock)
            "pgwarden_statements",
            "Statements by protocol and decision",
            ("protocol", "decision"),
            reg,
            [(p, d) for p in ("simple", "extended") for d in ("allowed", "rewritten", "refused")],
        )
        self.refusals = Counter("pgwarden_refusals", "Refused statements by policy rule", ["rule"], registry=reg)
        self.backend_errors = Counter(
            "pgwarden_backend_errors", "ErrorResponses from backends by SQLSTATE class", ["class"], registry=reg
        )
        self.rewrite_seconds = Histogram(
            "pgwarden_rewrite_seconds",
            "Time to decide a statement not in the rewrite cache",
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.05),
            registry=reg,
        )
        self.statement_seconds = BatchHistogram(  # (fed by the query statistics' flush)
            "pgwarden_statement_seconds",
            "Statement latency: forwarded to ReadyForQuery",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            reg,
        )
        self.logins = Counter("pgwarden_logins", "Client logins by outcome", ["outcome"], registry=reg)
        self.tls_handshakes = Counter(
            "pgwarden_tls_handshakes", "TLS handshakes with clients", ["outcome"], registry=reg
        )
        self.disconnects = Counter(
            "pgwarden_disconnects", "Client disconnects by reason class", ["reason"], registry=reg
        )
        self.primary_up = Gauge(
            "pgwarden_primary_up",
            "1 when a TCP connect to the primary succeeds (checked at scrape, at most every 2 s)",
            registry=reg,
        )
        self.limit_rejections = Counter(
            "pgwarden_limit_rejections",
            "Statements and logins refused by `limits:` (53400), by limit and kind (tenant, role, user)",
            ["limit", "kind"],
            registry=reg,
        )
        self.limit_fallbacks = Counter(
            "pgwarden_limit_fallbacks", "Rate decisions made in this process because limits.redis failed", registry=reg
        )
        reg.register(_StateCollector(server))
        self.tenant_statements = (
            PlainCounter(
                "pgwarden_tenant_statements",
                "Statements by tenant and decision (metrics.per_tenant)",
                ("tenant", "decision"),
                reg,
            )
            if self.config.per_tenant
            else None
        )
        self._tenants: set[str] = set()

    def statement(self, protocol: str, decision: str, tenant: str | None = None) -> None:
        """Count one statement; by tenant too when metrics.per_tenant is on."""
        self.statements.inc((protocol, decision))
        if self.tenant_statements is not None and tenant is not None:
            self.tenant_statements.inc((self.tenant_label(tenant), decision))

    def limit_rejected(self, limit: str, kind: str) -> None:
        """One statement or login refused by `limits:` (no tenant, role or user names in labels)."""
        self.limit_rejections.labels(limit, kind).inc()

    def tenant_label(self, tenant: str) -> str:
        """The tenant itself for the first `max_tenants` tenants seen, then "other"."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self.config.max_tenants:
            self._tenants.add(tenant)
            return tenant
        return OTHER_TENANT

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Merged:
    """A collector that yields metric families already gathered (from every worker)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self):
        yield from self.families


def merge_expositions(parts: Sequence[tuple[str, bytes]], once: Collection[str] = ("pgwarden_primary_up",)) -> bytes:
    """One exposition from the workers' own: each sample labelled with its `worker` (sum() them in PromQL);
    the families in `once` (facts measured once for the proxy) come from the first part only, unlabelled."""
    families: dict[str, Metric] = {}
    for number, (worker, text) in enumerate(parts):
        for family in text_string_to_metric_families(text.decode()):
            if family.name in once:
                if number == 0:
                    families[family.name] = family
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            merged.samples += [s._replace(labels={**s.labels, "worker": worker}) for s in family.samples]
    registry = CollectorRegistry()
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
