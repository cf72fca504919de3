"""Failover through a real pgwarden: a statement waits for the promoted replica, the old primary is fenced when it returns, no primary fails fast."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.harness import ProxyProcess, base_config
from tests.replication.cluster import PRIMARY, ReplicatedCluster
from tests.replication.conftest import missing

DETECT_S, WAIT_S = 2.0, 8.0
PORT_SQL = "select current_setting('port')::int"


@pytest.fixture(scope="module")
def pair():
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    cluster = ReplicatedCluster(("r1",)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _direct(cluster: ReplicatedCluster, name: str) -> psycopg.Connection:
    server = cluster.servers[name]
    return psycopg.connect(host=server.host, port=server.port, user="postgres", dbname="postgres", autocommit=True)


def test_a_promotion_is_followed_and_the_old_primary_is_fenced(pair, tmp_path):
    primary, r1 = pair.servers[PRIMARY], pair.servers["r1"]
    with _direct(pair, PRIMARY) as conn:
        conn.execute("create table events (id serial primary key, note text)")
    config = base_config(
        primary={"host": primary.host, "port": primary.port, "hosts": [{"host": r1.host, "port": r1.port}]},
        replicas=[{"host": r1.host, "port": r1.port}],
        routing={"check_interval": 0.1, "check_timeout": 0.5, "breaker_open": 1.0},
        failover={"detect_s": DETECT_S, "wait_s": WAIT_S},
        pool={"size": 4},
    )
    with ProxyProcess(config, tmp_path) as proc:
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            conn.execute("insert into events (note) values ('before')")
            held = psycopg.connect(proc.dsn())  # a transaction open on the primary when it goes
            held.execute("insert into events (note) values ('lost')")

            pair.stop_server(PRIMARY)
            with pytest.raises(psycopg.OperationalError):  # its transaction fails; never hangs
                held.execute("insert into events (note) values ('lost too')")
            held.close()

            promoted_at: list[float] = []

            def promote() -> None:
                time.sleep(1.0)
                pair.promote("r1")
                promoted_at.append(time.monotonic())

            promoter = threading.Thread(target=promote)
            promoter.start()
            started = time.monotonic()
            # A new statement waits (up to failover.wait_s) for the new primary instead of failing.
            row = conn.execute("insert into events (note) values ('after') returning current_setting('port')::int")
            took = time.monotonic() - started
            promoter.join()
            assert row.fetchone() == (r1.port,)
            assert took < WAIT_S
            after_promotion = time.monotonic() - promoted_at[0]
            assert after_promotion < DETECT_S + 1.0, after_promotion
            print(f"\nfailover: write answered {after_promotion:.2f}s after promotion ({took:.2f}s after it was sent)")

            pair.start_server(PRIMARY)  # the old primary comes back beside the new one, writable
            time.sleep(1.0)  # several checks: it must be fenced, never chosen
            for i in range(10):
                written = conn.execute(
                    "insert into events (note) values (%s) returning current_setting('port')::int", [f"x{i}"]
                )
                assert written.fetchone() == (r1.port,)
        with _direct(pair, PRIMARY) as old:
            assert old.execute("select count(*) from events where note like 'x%' or note = 'after'").fetchone() == (0,)
        with _direct(pair, "r1") as new:
            assert new.execute("select count(*) from events where note like 'x%'").fetchone() == (10,)
            assert new.execute("select count(*) from events where note in ('lost', 'lost too')").fetchone() == (0,)


def test_with_no_writable_primary_a_write_fails_within_wait_s(pair, tmp_path):
    """After the previous test r1 is the primary; stopping it leaves only the fenced old primary."""
    primary, r1 = pair.servers[PRIMARY], pair.servers["r1"]
    config = base_config(
        primary={"host": r1.host, "port": r1.port, "hosts": [{"host": primary.host, "port": primary.port}]},
        routing={"check_interval": 0.1, "check_timeout": 0.5},
        failover={"detect_s": DETECT_S, "wait_s": 2.0},
        pool={"size": 4},
    )
    with ProxyProcess(config, tmp_path) as proc, psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute(PORT_SQL).fetchone()[0] in (r1.port, primary.port)
        pair.stop_server("r1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("insert into events (note) values ('nowhere')")
        took = time.monotonic() - started
        assert took < 2.0 + 3.0, took
        assert info.value.sqlstate in ("08006", "57P01"), info.value
