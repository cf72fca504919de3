"""proxy.changes.ChangeConsumer against a real PostgreSQL (wal_level=logical, SCRAM): writes made straight to the
database reach on_commit with the right tables, within a measured bound, across a killed walsender."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import psycopg
import pytest

from proxy.changes.consumer import ChangeConsumer, ChangeSource
from tests.harness import free_port
from tests.pgcluster import BINDIR, PgCluster

ROLE, PASSWORD, DB = "cache_reader", "reader-pw", "shop"
TABLES = ("items", "orders", "stock.levels", "stock.moves")  # items and orders in public; moves is partitioned
SCHEMA = """
create schema stock;
create table items (id int primary key, name text);
create table orders (id int primary key, item int, qty int);
create table stock.levels (item int primary key, qty int);
create table stock.moves (item int, at date) partition by range (at);
create table stock.moves_2026 partition of stock.moves for values from ('2026-01-01') to ('2027-01-01');
create table audit_log (id serial primary key, note text);
insert into items values (1, 'pen'), (2, 'ink');
insert into orders values (1, 1, 3);
insert into stock.levels values (1, 10), (2, 20);
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster with wal_level=logical; the consumer's role may replicate and owns the tables, nothing more."""
    settings = ("wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10")
    with PgCluster(None, free_port(), settings=settings) as pg:
        pg.create_role(ROLE, PASSWORD)
        pg.psql(f"ALTER ROLE {ROLE} REPLICATION")
        pg.psql(f"CREATE DATABASE {DB} OWNER {ROLE}")
        with psycopg.connect(dsn(pg, ROLE, PASSWORD), autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield pg


def dsn(pg: PgCluster, user: str = ROLE, password: str = PASSWORD) -> str:
    return f"host={pg.host} port={pg.port} user={user} password={password} dbname={DB}"


class Seen(NamedTuple):
    tables: frozenset[str]
    commit_lsn: int
    commit_time: float
    at: float  # time.monotonic() when on_commit ran


class Recorder:
    """on_commit and on_resync for a test: a queue of commits and a count of resyncs."""

    def __init__(self) -> None:
        self.commits: asyncio.Queue[Seen] = asyncio.Queue()
        self.resyncs = 0
        self.fail_next = False

    async def on_commit(self, tables: frozenset[str], commit_lsn: int, commit_time: float) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the cache could not bump its versions")
        self.commits.put_nowait(Seen(tables, commit_lsn, commit_time, time.monotonic()))

    async def on_resync(self) -> None:
        self.resyncs += 1

    async def next(self, timeout: float = 3.0) -> Seen:
        return await asyncio.wait_for(self.commits.get(), timeout)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@asynccontextmanager
async def consuming(
    pg: PgCluster, tables: tuple[str, ...] = TABLES, **kw: object
) -> AsyncIterator[tuple[ChangeConsumer, Recorder]]:
    rec = Recorder()
    source = ChangeSource(pg.host, pg.port, ROLE, DB, PASSWORD, tables, **kw)
    consumer = ChangeConsumer(source, rec.on_commit, rec.on_resync)
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: consumer.healthy(1.0) or task.done())
        assert consumer.healthy(1.0), consumer.status(1.0)
        yield consumer, rec
    finally:
        await consumer.stop()
        assert task.done()


async def psql(pg: PgCluster, sql: str) -> None:
    """A write from psql, as a cron job would make it."""
    env = {"PGPASSWORD": PASSWORD}
    proc = await asyncio.create_subprocess_exec(
        str(BINDIR / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn(pg), env=env
    )
    assert await proc.wait() == 0


def slot_position(pg: PgCluster, slot: str) -> int | None:
    """The slot's confirmed_flush_lsn as a number; None when there is no such slot."""
    with psycopg.connect(dsn(pg)) as conn:
        row = conn.execute(
            "select (confirmed_flush_lsn - '0/0')::bigint from pg_replication_slots where slot_name = %s", (slot,)
        ).fetchone()
        return None if row is None else row[0]


def run(coro: Coroutine[None, None, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def test_commits_report_the_tables_they_changed(cluster: PgCluster) -> None:
    async def scenario() -> None:
        async with consuming(cluster) as (consumer, rec):
            assert rec.resyncs == 1
            slot = consumer.source.slot
            db = await psycopg.AsyncConnection.connect(dsn(cluster), autocommit=True)
            expectations = [
                ("insert into items values (3, 'nib')", {"public.items"}),
                ("update orders set qty = qty + 1", {"public.orders"}),
                ("delete from stock.levels where item = 2", {"stock.levels"}),
                (
                    "begin; insert into orders values (20, 2, 1); update stock.levels set qty = 9; commit",
                    {"public.orders", "stock.levels"},
                ),
                ("truncate items, stock.levels cascade", {"public.items", "stock.levels"}),
                ("insert into stock.moves values (1, '2026-12-05')", {"stock.moves"}),  # not stock.moves_2026
            ]
            last_lsn = 0
            for sql, tables in expectations:
                before = time.time()
                await db.execute(sql)
                seen = await rec.next()
                assert seen.tables == tables, sql
                assert seen.commit_lsn > last_lsn
                assert before - 1 < seen.commit_time < time.time() + 1  # the server's clock, Unix seconds
                last_lsn = seen.commit_lsn
            await psql(cluster, "insert into items values (10, 'from psql')")
            assert (await rec.next()).tables == {"public.items"}
            # neither an unpublished table, a rolled-back transaction nor a no-op makes a callback:
            # the next one is the marker, and nothing follows it
            await db.execute("insert into audit_log (note) values ('not cached')")
            await db.execute("begin; insert into items values (4, 'x'); delete from orders; rollback")
            await db.execute("delete from orders where id = -1")
            await db.execute("insert into stock.levels values (7, 7)")
            marker = await rec.next()
            assert marker.tables == {"stock.levels"}
            await asyncio.sleep(0.3)
            assert rec.commits.empty()
            # acknowledged: the slot's confirmed position passed the last commit
            await until(lambda: (slot_position(cluster, slot) or 0) > marker.commit_lsn)
            await db.close()
        # the temporary slot went with the consumer's connection: no WAL is kept for it any more
        await until(lambda: slot_position(cluster, slot) is None)

    run(scenario())


def test_latency_from_commit_to_callback(cluster: PgCluster) -> None:
    async def scenario() -> None:
        async with consuming(cluster) as (_, rec):
            db = await psycopg.AsyncConnection.connect(dsn(cluster), autocommit=True)
            await db.execute("set synchronous_commit = on")  # the cluster's default is off; measure the usual case
            after_return, after_send = [], []
            for i in range(20):
                sent = time.monotonic()
                await db.execute("insert into items values (%s, %s)", (1000 + i, f"v{i}"))
                returned = time.monotonic()
                seen = await rec.next()
                after_return.append(seen.at - returned)  # < 0 when the callback beats psycopg's return
                after_send.append(seen.at - sent)  # the statement's whole round trip included: an upper bound
            await db.close()
        for what, values in (("COMMIT returned", after_return), ("statement sent", after_send)):
            median, worst = statistics.median(values) * 1000, max(values) * 1000
            print(f"\n{what} -> on_commit over 20 commits: median {median:.2f} ms, max {worst:.2f} ms", end="")
        assert max(after_return) < 1.0 and max(after_send) < 1.0

    run(scenario())


def test_a_commit_is_reported_only_once_new_snapshots_see_it(cluster: PgCluster) -> None:
    """PostgreSQL logs a commit before it takes the transaction out of the running set: the WAL can
    report a commit that a query started then would not see. The consumer waits until a new snapshot
    sees the transaction (this one is kept running, its id as pgoutput's Begin gives it)."""

    async def scenario() -> None:
        async with consuming(cluster) as (consumer, _):
            db = await psycopg.AsyncConnection.connect(dsn(cluster))
            row = await (await db.execute("select pg_current_xact_id()::text")).fetchone()
            assert row is not None
            xid = int(row[0]) & 0xFFFF_FFFF
            waiting = asyncio.create_task(consumer._visible(xid))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await db.commit()
            await asyncio.wait_for(waiting, 1.0)
            await asyncio.wait_for(consumer._visible(xid), 0.01)  # (the snapshot read last answers now)
            await db.close()

    run(scenario())


def test_the_consumer_is_unhealthy_while_idle_only_if_the_heartbeat_stops(cluster: PgCluster) -> None:
    async def scenario() -> None:
        async with consuming(cluster, heartbeat_s=0.1) as (consumer, _):
            lags = []
            for _ in range(10):
                await asyncio.sleep(0.07)
                lags.append(consumer.lag_s)
            assert max(lags) < 0.5, lags  # nothing written but the heartbeat: the lag stays near its period

    run(scenario())


@pytest.mark.parametrize("backend_type", ["walsender", "client backend"])
def test_a_killed_connection_is_reconnected_and_later_commits_seen(cluster: PgCluster, backend_type: str) -> None:
    async def scenario() -> None:
        async with consuming(cluster, backoff_s=(0.3, 1.0)) as (consumer, rec):
            slot = consumer.source.slot
            cluster.psql(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                f" where application_name = '{slot}' and backend_type = '{backend_type}'"
            )
            await until(lambda: not consumer.connected)
            assert not consumer.healthy(1.0) and consumer.lag_s == float("inf")
            assert consumer.status(1.0).behind
            assert "terminating connection" in (consumer.last_error or "")
            await until(lambda: consumer.healthy(1.0))
            assert consumer.sessions == 2 and rec.resyncs == 2  # the new slot began with a resync
            await psql(cluster, "insert into orders select max(id) + 1000, 1, 1 from orders")
            assert (await rec.next()).tables == {"public.orders"}

    run(scenario())


def test_a_failing_callback_drops_the_session_and_resyncs(cluster: PgCluster) -> None:
    async def scenario() -> None:
        async with consuming(cluster, backoff_s=(0.05, 0.2)) as (consumer, rec):
            rec.fail_next = True
            await psql(cluster, "insert into items values (200, 'lost')")
            await until(lambda: rec.resyncs == 2 and consumer.healthy(1.0))
            assert "could not bump" in (consumer.last_error or "")
            await psql(cluster, "insert into items values (201, 'seen')")
            assert (await rec.next()).tables == {"public.items"}

    run(scenario())


def published(pg: PgCluster, name: str) -> set[str]:
    with psycopg.connect(dsn(pg)) as conn:
        rows = conn.execute("select schemaname, tablename from pg_publication_tables where pubname = %s", (name,))
        return {f"{schema}.{table}" for schema, table in rows}


def test_the_publication_is_widened_never_narrowed(cluster: PgCluster) -> None:
    async def scenario() -> None:
        async with consuming(cluster, ("items",), publication="narrow"):
            assert published(cluster, "narrow") == {"public.items"}
        async with consuming(cluster, ("orders",), publication="narrow") as (_, rec):
            assert published(cluster, "narrow") == {"public.items", "public.orders"}
            await psql(
                cluster, "begin; insert into items values (300, 'a'); insert into orders values (300, 1, 1); commit"
            )
            assert (await rec.next()).tables == {"public.items", "public.orders"}

    run(scenario())


def test_without_a_usable_publication_the_consumer_never_turns_healthy(cluster: PgCluster) -> None:
    """All tables asked: a publication for some tables must not do, and only a superuser may create one FOR ALL TABLES."""

    async def scenario() -> None:
        for publication, error in (("narrow_only", "exists for some tables only"), ("every_table", "superuser")):
            if publication == "narrow_only":
                with psycopg.connect(dsn(cluster), autocommit=True) as conn:
                    conn.execute("create publication narrow_only for table items")
            source = ChangeSource(
                cluster.host, cluster.port, ROLE, DB, PASSWORD, (), publication, backoff_s=(0.05, 0.1)
            )
            consumer = ChangeConsumer(source, Recorder().on_commit)
            task = asyncio.create_task(consumer.run())
            await until(lambda c=consumer: c.last_error is not None)
            assert error in consumer.last_error, consumer.last_error
            assert not consumer.healthy(10.0) and not consumer.connected
            await consumer.stop()
            assert task.done()

    run(scenario())
