"""The Monitor (proxy/routing/monitor.py) against a real primary with two replicas: roles, lag, down and back, failover.

The tests share one cluster and run in this order: the failover test, last, leaves r1 as primary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest

from proxy.config.model import Config
from proxy.routing.health import DOWN, FENCED, OPEN, PRIMARY, PRIMARY_CANDIDATE, REPLICA, STANDBY, ServerState
from proxy.routing.monitor import APPLICATION_NAME, Monitor

if TYPE_CHECKING:
    from tests.replication.cluster import ReplicatedCluster

pytestmark = pytest.mark.integration

CHECK_INTERVAL, CHECK_TIMEOUT, BREAKER_FAILURES, BREAKER_OPEN, DETECT_S = 0.2, 1.0, 2, 1.0, 3.0
APP = APPLICATION_NAME
MONITOR_SESSIONS = f"SELECT count(*), min(backend_start) FROM pg_stat_activity WHERE application_name = '{APP}'"
R2_MAX_LAG_MS = 500


def config(cluster: ReplicatedCluster) -> Config:
    """Primary candidates: the primary, then r1; replicas r1 and r2 (r2 with a small max_lag_ms)."""
    p, r1, r2 = (cluster.servers[n] for n in ("primary", "r1", "r2"))
    return Config.model_validate(
        {
            "primary": {"host": p.host, "port": p.port, "hosts": [{"host": r1.host, "port": r1.port}]},
            "replicas": [
                {"host": r1.host, "port": r1.port},
                {"host": r2.host, "port": r2.port, "max_lag_ms": R2_MAX_LAG_MS},
            ],
            "routing": {
                "check_interval": CHECK_INTERVAL,
                "check_timeout": CHECK_TIMEOUT,
                "breaker_failures": BREAKER_FAILURES,
                "breaker_open": BREAKER_OPEN,
            },
            "failover": {"detect_s": DETECT_S},
            "backend_auth": {"user": "postgres"},
        }
    )


def run(cluster: ReplicatedCluster, body: Callable[[Monitor, list[str]], Awaitable[None]]) -> None:
    """Start a Monitor on the cluster, run `body(monitor, names passed to on_primary)`, stop it."""

    async def main() -> None:
        chosen: list[str] = []
        monitor = Monitor(config(cluster), lambda s: chosen.append(s.name))
        await monitor.start()
        try:
            await body(monitor, chosen)
        finally:
            await monitor.stop()

    asyncio.run(main())


async def until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until `predicate()` holds (polled every 20 ms); fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def state(monitor: Monitor, cluster: ReplicatedCluster, name: str, kind: str = REPLICA) -> ServerState:
    address = f"127.0.0.1:{cluster.servers[name].port}"
    return next(s for s in monitor.states(address) if s.kind == kind)


def write(cluster: ReplicatedCluster) -> int:
    """Commit a row on the primary; the WAL position after it."""
    cluster.psql(cluster.primary_name, "CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
    return cluster.primary_lsn()


def test_replicas_report_standby_and_replay_advancing(replicated: ReplicatedCluster) -> None:
    async def body(monitor: Monitor, chosen: list[str]) -> None:
        p, r1, r2 = (
            state(monitor, replicated, n, k)
            for n, k in (("primary", PRIMARY_CANDIDATE), ("r1", REPLICA), ("r2", REPLICA))
        )
        assert monitor.primary is p and p.role == PRIMARY and p.timeline == 1
        assert chosen == [p.name] and monitor.failovers == 0
        assert [id(s) for s in monitor.replicas] == [id(r1), id(r2)]  # r1 the candidate is not among them
        assert state(monitor, replicated, "r1", PRIMARY_CANDIDATE).role == STANDBY
        assert (r1.role, r1.in_recovery, r2.role, r2.in_recovery) == (STANDBY, True, STANDBY, True)
        before = r1.lsn
        lsn = write(replicated)
        assert lsn > before
        monitor.poke()
        await until(
            "r1 reports the write replayed, within its lag limits", lambda: r1.lsn >= lsn and not r1.lagging(), 3
        )
        assert p.lsn >= lsn and not r1.lagging()
        first = replicated.psql("primary", MONITOR_SESSIONS)
        checked = p.checked_at
        await until("two more checks of the primary", lambda: p.checked_at > checked + CHECK_INTERVAL, 2)
        assert replicated.psql("primary", MONITOR_SESSIONS) == first  # the same one connection, kept between checks
        assert first.startswith("1|")

    run(replicated, body)


def test_delayed_replica_lags_then_catches_up(replicated: ReplicatedCluster) -> None:
    async def body(monitor: Monitor, chosen: list[str]) -> None:
        r1, r2 = state(monitor, replicated, "r1"), state(monitor, replicated, "r2")
        first = write(replicated)  # r2 then has a replayed commit to measure its delay from
        await until("r2 caught up before the write", lambda: r2.lsn >= first and not r2.lagging(), 5)
        lsn = write(replicated)
        monitor.poke()
        await until("r2 lagging after the write", r2.lagging, 1.5)
        assert r2.lag_bytes is not None and r2.lag_bytes > 0 and r2.lsn < lsn
        assert r2.lag_ms is not None and r2.lag_ms > R2_MAX_LAG_MS
        await until("r1 not lagging", lambda: r1.lsn >= lsn and not r1.lagging(), 2)
        await until("r2 replays after its 2 s delay", lambda: r2.lsn >= lsn and not r2.lagging(), 4)
        assert (r2.lag_bytes, r2.lag_ms) == (0, 0.0)

    run(replicated, body)


def test_hung_check_times_out_marks_down_and_reconnects(replicated: ReplicatedCluster) -> None:
    async def body(monitor: Monitor, chosen: list[str]) -> None:
        r2 = state(monitor, replicated, "r2")
        pid = int(replicated.psql("r2", f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APP}'"))
        os.kill(pid, signal.SIGSTOP)  # the backend serving the monitor stops answering; the server still does
        try:
            await until("r2 down after a check timed out", lambda: not r2.up, CHECK_INTERVAL + CHECK_TIMEOUT + 1)
            assert r2.last_error is not None and "timed out" in r2.last_error
            assert r2.role == DOWN and r2.breaker.state == "closed"  # one failure: below BREAKER_FAILURES
        finally:
            os.kill(pid, signal.SIGCONT)
        await until("r2 up again on a new connection", lambda: r2.up, CHECK_INTERVAL + CHECK_TIMEOUT + 1)
        new_pid = replicated.psql("r2", f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APP}'")
        assert int(new_pid) != pid

    run(replicated, body)


def test_stopped_replica_goes_down_opens_its_breaker_and_comes_back(replicated: ReplicatedCluster) -> None:
    async def body(monitor: Monitor, chosen: list[str]) -> None:
        r1, r1_candidate = state(monitor, replicated, "r1"), state(monitor, replicated, "r1", PRIMARY_CANDIDATE)
        replicated.stop_server("r1")
        await until("r1 down at the next check", lambda: not r1.up, CHECK_INTERVAL + 1)
        assert (r1.role, r1_candidate.role, r1.lag_bytes) == (DOWN, DOWN, None)
        assert r1.lagging() and r1.last_error
        await until("r1's breaker open", lambda: r1.breaker.state == OPEN, BREAKER_FAILURES * CHECK_INTERVAL + 1)
        assert r1.breaker.opened == 1
        replicated.start_server("r1")
        await until("r1 back", lambda: r1.up and r1.role == STANDBY, BREAKER_OPEN + CHECK_INTERVAL + 2)
        assert r1.last_error is None and r1.breaker.state == "closed"
        assert monitor.primary is not None and monitor.primary.port == replicated.servers["primary"].port
        assert monitor.failovers == 0 and len(chosen) == 1

    run(replicated, body)


def test_failover_to_promoted_replica_fences_the_old_primary(replicated: ReplicatedCluster) -> None:
    async def body(monitor: Monitor, chosen: list[str]) -> None:
        old, r1 = (
            state(monitor, replicated, "primary", PRIMARY_CANDIDATE),
            state(monitor, replicated, "r1", PRIMARY_CANDIDATE),
        )
        assert monitor.primary is old
        replicated.stop_server("primary")
        await until("no primary while it is down", lambda: monitor.primary is None, CHECK_INTERVAL + 1)
        assert await monitor.wait_primary(0.1) is None
        replicated.promote("r1")
        promoted = time.monotonic()
        assert await monitor.wait_primary(DETECT_S) is r1
        assert time.monotonic() - promoted < DETECT_S
        assert (r1.role, r1.timeline, monitor.failovers, chosen) == (PRIMARY, 2, 1, [old.name, r1.name])
        assert state(monitor, replicated, "r1", REPLICA).role == PRIMARY  # the same address as a replica

        replicated.start_server("primary")  # writable again, on timeline 1
        await until("old primary fenced", lambda: old.up and old.role == FENCED, BREAKER_OPEN + 3)
        assert old.in_recovery is False and old.timeline == 1
        for _ in range(3):  # several checks later it is still not chosen
            await asyncio.sleep(CHECK_INTERVAL)
            assert monitor.primary is r1 and old.role == FENCED
        assert monitor.failovers == 1

        replicated.stop_server("r1")  # the promoted primary goes: the old one still never takes writes
        await until("r1 down", lambda: not r1.up, CHECK_INTERVAL + 1)
        await asyncio.sleep(2 * CHECK_INTERVAL)
        assert monitor.primary is None and old.role == FENCED and chosen == [old.name, r1.name]

    run(replicated, body)
