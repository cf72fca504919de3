"""In-process microbench of one pgbench -S transaction through Framer and SessionCore (no sockets): µs per round trip."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from proxy.ops.stats import QueryStats
from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Registry
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


def _core(stats: QueryStats) -> tuple[SessionCore, _Sink, Backend]:
    unused: Any = None
    metrics: Any = _Metrics()
    ctx = SessionContext(
        config=unused,
        statements=Registry(),
        stats=stats,
        slowlog=None,
        audit=None,
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


def run(mode: str, n: int, flush_every: int) -> float:
    stats = QueryStats()
    core, _sink, backend = _core(stats)
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
        if core.backend is None:
            core.link(backend)
        core.forward(msgs)
        core.backend_data(backend, answer)
        if i % flush_every == 0:
            stats.flush()
    stats.flush()
    return 1e6 * (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--flush-every", type=int, default=1000, help="QueryStats.flush every N transactions")
    ap.add_argument("--profile", action="store_true", help="cProfile the run instead, top functions")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run, mode, args.n, args.flush_every)
            print(f"== {mode}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        else:
            best = min(run(mode, args.n, args.flush_every) for _ in range(3))
            print(f"{mode:<9} {best:6.2f} µs of Python per transaction (core + framer + stats flush)")


if __name__ == "__main__":
    main()
