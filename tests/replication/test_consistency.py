"""No stale reads: sessions interleaving writes and reads through pgwarden never miss a committed write, in one process and across two sharing Redis."""

from __future__ import annotations

import time

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.harness import REDIS_URL, ProxyProcess, base_config
from tests.replication.cluster import PRIMARY, ReplicatedCluster

KEYS = ("a", "b", "c")
SESSIONS = 3
LAX = {"max_lag_ms": 600_000, "max_lag_bytes": 1 << 40}  # r2, 2 s behind, stays in rotation


def _config(cluster: ReplicatedCluster, replicas: tuple[str, ...], **routing) -> dict:
    primary = cluster.servers[PRIMARY]
    servers = [cluster.servers[name] for name in replicas]
    return base_config(
        primary={"host": primary.host, "port": primary.port},
        replicas=[{"host": s.host, "port": s.port} for s in servers],
        routing={"check_interval": 0.1, **LAX, **routing},
        pool={"size": 8},
    )


@pytest.fixture(scope="module")
def table(replicated):
    server = replicated.servers[PRIMARY]
    with psycopg.connect(host=server.host, port=server.port, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute("drop table if exists counters; create table counters (k text primary key, v int not null)")
        c.cursor().executemany("insert into counters values (%s, 0)", [(k,) for k in KEYS])
    # r2's delay is known (not lagging) once it has replayed a commit: the table's.
    replicated.wait_replayed("r2", replicated.primary_lsn(), 15)
    return "counters"


@pytest.fixture(scope="module")
def proxy(replicated, table, tmp_path_factory):
    with ProxyProcess(_config(replicated, ("r1", "r2")), tmp_path_factory.mktemp("consistency")) as proc:
        yield proc


def _read(conn: psycopg.Connection, key: str) -> int:
    return conn.execute("select v from counters where k = %s", [key]).fetchone()[0]


def _write(conn: psycopg.Connection, key: str) -> int:
    return conn.execute("update counters set v = v + 1 where k = %s returning v", [key]).fetchone()[0]


def test_no_read_misses_a_write_committed_before_it_was_sent(proxy):
    class Interleaved(RuleBasedStateMachine):
        @initialize()
        def connect(self) -> None:
            self.conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(SESSIONS)]
            self.model = {key: _read(self.conns[0], key) for key in KEYS}

        @rule(session=st.integers(0, SESSIONS - 1), key=st.sampled_from(KEYS))
        def write(self, session: int, key: str) -> None:
            self.model[key] = _write(self.conns[session], key)

        @rule(session=st.integers(0, SESSIONS - 1), key=st.sampled_from(KEYS))
        def read(self, session: int, key: str) -> None:
            assert _read(self.conns[session], key) == self.model[key]

        @rule(session=st.integers(0, SESSIONS - 1), key=st.sampled_from(KEYS))
        def write_in_a_transaction_then_read(self, session: int, key: str) -> None:
            conn = self.conns[session]
            with conn.transaction():
                self.model[key] = _write(conn, key)
            other = self.conns[(session + 1) % SESSIONS]
            assert _read(other, key) == self.model[key]

        @rule()
        def settle(self) -> None:
            time.sleep(0.15)  # r1 catches up: the reads after this may land on it

        @invariant()
        def sessions_open(self) -> None:
            assert all(not c.closed for c in getattr(self, "conns", []))

        def teardown(self) -> None:
            for conn in getattr(self, "conns", []):
                conn.close()

    Interleaved.TestCase.settings = settings(
        max_examples=6, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
    )
    run_state_machine_as_test(Interleaved, settings=Interleaved.TestCase.settings)


def test_the_oracle_sees_stale_reads_when_the_watermark_is_off(replicated, table, tmp_path):
    """The check above can fail: without the watermark, r2 (2 s behind) serves stale rows."""
    config = _config(replicated, ("r2",), read_your_writes=False)
    with ProxyProcess(config, tmp_path) as proc, psycopg.connect(proc.dsn(), autocommit=True) as conn:
        stale = 0
        for _ in range(5):
            written = _write(conn, "a")
            stale += _read(conn, "a") != written
        assert stale >= 4, stale


def test_watermarks_shared_through_redis_reach_another_instance(replicated, table, tmp_path):
    """Two pgwarden processes, r2 (2 s behind) their only replica: a write through A, then a read
    through B, sees it, because B reads A's watermark from Redis. Without Redis, B reads r2."""
    with (
        ProxyProcess(_config(replicated, ("r2",), redis=REDIS_URL), tmp_path / "a") as a,
        ProxyProcess(_config(replicated, ("r2",), redis=REDIS_URL), tmp_path / "b") as b,
        psycopg.connect(a.dsn(), autocommit=True) as via_a,
        psycopg.connect(b.dsn(), autocommit=True) as via_b,
    ):
        for _ in range(6):
            written = _write(via_a, "b")
            assert _read(via_b, "b") == written
    with (
        ProxyProcess(_config(replicated, ("r2",)), tmp_path / "c") as c,
        ProxyProcess(_config(replicated, ("r2",)), tmp_path / "d") as d,
        psycopg.connect(c.dsn(), autocommit=True) as via_c,
        psycopg.connect(d.dsn(), autocommit=True) as via_d,
    ):
        stale = 0
        for _ in range(4):
            written = _write(via_c, "b")
            stale += _read(via_d, "b") != written
    assert stale >= 3, stale
