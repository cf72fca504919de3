"""In-process microbench of one pgbench -S transaction through Framer and SessionCore (no sockets): µs per round trip;
with --cache, plus what the relay asks of the result cache for traffic it does not take (its bookkeeping)."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from types import SimpleNamespace
from typing import Any

from proxy.audit import process as audit_process
from proxy.audit.process import AuditProcess
from proxy.audit.trail import Audit
from proxy.cache.eligible import Catalog
from proxy.cache.results import ResultCache
from proxy.config.cache import Cache
from proxy.config.sections import AuditConfig
from proxy.ops.stats import QueryStats, Shapes
from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Registry
from proxy.routing.volatility import Volatility
from proxy.session.caching import Caching, SessionCache
from proxy.session.context import SessionContext
from proxy.session.core import SessionCore
from proxy.session.state import SessionState
from proxy.wire import protocol as p

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
ROWDESC = p.message(b"T", b"\x00\x01abalance\x00\x00\x00@\x06\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
ROW = p.message(b"D", b"\x00\x01\x00\x00\x00\x04-123")
DONE = p.command_complete("SELECT 1") + p.ready_for_query(b"I")


class _Sink:
    """A transport and a shell that only keep the last bytes."""

    def __init__(self) -> None:
        self.last = b""
        self.detached: list[Backend] = []

    def write(self, data: bytes) -> None:
        self.last = data

    def is_closing(self) -> bool:
        return False

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        raise AssertionError(message)

    def close(self, reason: str) -> None:
        raise AssertionError(reason)

    def detach(self, backend: Backend) -> None:
        self.detached.append(backend)


class _Counter:
    def labels(self, *_: str) -> _Counter:
        return self

    def inc(self) -> None:
        pass


class _Metrics:
    backend_errors = refusals = _Counter()


def _core(stats: QueryStats, audit: AuditProcess | None = None) -> tuple[SessionCore, _Sink, Backend]:
    unused: Any = None
    metrics: Any = _Metrics()
    ctx = SessionContext(
        config=unused,
        statements=Registry(),
        stats=stats,
        slowlog=None,
        audit=audit,
        metrics=metrics,
        router=lambda: None,
        tls_context=lambda: None,
        draining=lambda: False,
        issue_key=unused,
        forget=unused,
        client_count=unused,
        cancel=unused,
        pool_for=unused,
        ensure_schema=unused,
        refresh_schemas=unused,
        admin_console=unused,
    )
    sink = _Sink()
    core = SessionCore(SessionState(1, 2, tx_mode=True), ctx, sink)
    backend = Backend(100)
    transport: Any = sink
    backend.transport = transport
    return core, sink, backend


def _traffic(mode: str, i: int) -> tuple[bytes, bytes]:
    """The client's bytes for transaction `i` and the backend's answer."""
    if mode == "simple":
        return p.query(SQL.format(i)), ROWDESC + ROW + DONE
    bind = p.message(
        b"B", b"\x00" + (b"P_0\x00" if mode == "prepared" else b"\x00") + b"\x00\x00\x00\x01\x00\x00\x00\x03123\x00\x00"
    )
    tail = bind + p.message(b"D", b"P\x00") + p.message(b"E", b"\x00\x00\x00\x00\x00") + p.SYNC
    answer = p.message(b"2") + ROWDESC + ROW + DONE
    if mode == "prepared":
        return tail, answer
    return p.parse("", SQL.format("$1"), b"\x00\x01\x00\x00\x00\x17") + tail, p.message(b"1") + answer


def _drain(audit: AuditProcess | None, lines: list[bytes]) -> None:
    """What the sender task does with the queue: batches for the pipe (kept for the writer's half)."""
    if audit is not None and audit.queue:
        lines.append(audit_process.encode_batch(list(audit.queue)))
        audit.queue.clear()


def writer_cost(lines: list[bytes], n: int) -> float:
    """µs of the writer process per transaction: decode the pipe's lines, redact, number and chain."""
    trail = Audit(AuditConfig(queue_size=10**9))
    start = time.process_time()
    for line in lines:
        trail.form(audit_process.decode_batch(line))
    return 1e6 * (time.process_time() - start) / n


def _session_cache(core: SessionCore, shapes: Shapes) -> SessionCache:
    """A result cache of another table (`cache.tables: [public.other]`), its catalog read, for `core`'s session."""
    volatility = Volatility({}, {"=": "i"}, {})
    catalog = Catalog(frozenset({"public.other"}), {}, volatility)

    async def read_catalog(_database: str) -> tuple[Volatility, Catalog]:
        return volatility, catalog

    async def loaded() -> Caching:
        config = Cache(tables=["public.other"])
        feed = SimpleNamespace(healthy=lambda _bound: True)
        caching = Caching(config, ResultCache(config), lambda _db: feed, read_catalog, shapes)
        caching.classifier(core.state.database)
        await caching._loading[core.state.database]
        return caching

    return SessionCache(asyncio.run(loaded()), core.state, core.names, None)


def run(mode: str, n: int, flush_every: int, lines: list[bytes] | None = None, cached: bool = False) -> float:
    """µs of Python per transaction; with `lines` an audit trail is on (its pipe's lines kept there); with
    `cached`, a result cache of another table is probed and told each batch, as the relay does."""
    shapes = Shapes() if cached else None
    stats = QueryStats(shapes=shapes)
    audit = AuditProcess(AuditConfig(queue_size=10**9)) if lines is not None else None
    core, _sink, backend = _core(stats, audit)
    cache = _session_cache(core, shapes) if shapes is not None else None
    framer = p.Framer()
    if mode == "prepared":
        core.link(backend)
        core.forward(framer.split(p.parse("P_0", SQL.format("$1"), b"\x00\x01\x00\x00\x00\x17") + p.SYNC))
        core.backend_data(backend, p.message(b"1") + p.ready_for_query(b"I"))
    traffic = [_traffic(mode, i) for i in range(n)]  # simple: every text distinct, as pgbench's
    start = time.process_time()
    for i in range(n):
        request, answer = traffic[i]
        msgs = framer.split(request)
        if cache is not None and cache.probe(msgs, core.backend) is not None:
            raise AssertionError("the benchmark's traffic is not the cache's")
        if core.backend is None:
            core.link(backend)
        if cache is not None:
            cache.note(msgs)
        core.forward(msgs)
        core.backend_data(backend, answer)
        if cache is not None:
            cache.block_began(backend.tracker.status, core.state.wrote)  # (the relay's hold, at each ReadyForQuery)
        if i % flush_every == 0:
            stats.flush()
        if lines is not None and i % 64 == 0:
            _drain(audit, lines)
    stats.flush()
    if lines is not None:
        _drain(audit, lines)
    return 1e6 * (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--flush-every", type=int, default=1000, help="QueryStats.flush every N transactions")
    ap.add_argument("--profile", action="store_true", help="cProfile the run instead, top functions")
    ap.add_argument("--audit", action="store_true", help="with an audit trail: the proxy's half, then the writer's")
    ap.add_argument("--cache", action="store_true", help="also with a result cache of another table (its bookkeeping)")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        lines: list[bytes] | None = [] if args.audit else None
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run, mode, args.n, args.flush_every, lines)
            if lines is not None:
                prof.runcall(writer_cost, lines, args.n)
            print(f"== {mode}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(24)
            continue
        best, writer = float("inf"), float("inf")
        for _ in range(3):
            lines = [] if args.audit else None
            best = min(best, run(mode, args.n, args.flush_every, lines))
            if lines is not None:
                writer = min(writer, writer_cost(lines, args.n))
        print(f"{mode:<9} {best:6.2f} µs of Python per transaction (core + framer + stats flush)", end="")
        print(f"; audit writer {writer:6.2f} µs" if args.audit else "", end="")
        if args.cache:
            with_cache = min(run(mode, args.n, args.flush_every, cached=True) for _ in range(3))
            print(f"; with a cache of another table {with_cache:6.2f} µs (+{with_cache - best:.2f})", end="")
        print()


if __name__ == "__main__":
    main()
