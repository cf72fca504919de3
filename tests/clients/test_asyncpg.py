"""asyncpg through pgwarden: its named prepared statements and cache, executemany, COPY, timeouts, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal

import asyncpg
import pytest

from tests.clients.support import direct_execute, pool_mode, unique

pytestmark = pytest.mark.timeout(60)

TABLE = unique("pgw_asyncpg_orders")


@pytest.fixture
def orders():
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")
    direct_execute(
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, customer text NOT NULL, total numeric(12,2),"
        " placed timestamptz, items int[], meta jsonb)"
    )
    yield TABLE
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")


async def connect(proxy, **kwargs) -> asyncpg.Connection:
    return await asyncpg.connect(proxy.url(), timeout=10, **kwargs)


def test_type_introspection_on_a_reused_backend(fresh_proxy):
    """asyncpg introspects array types with extra statements; successive clients share fresh backends."""

    async def main():
        for i in range(4):
            conn = await connect(fresh_proxy)
            try:
                assert await conn.fetchval("SELECT 1 + $1::int", i) == i + 1
                assert await conn.fetchval("SELECT $1::int[]", [i, None]) == [i, None]
            finally:
                await conn.close()

    asyncio.run(main())


def test_prepared_statement_after_a_failed_parse(proxy):
    async def main():
        conn = await connect(proxy)
        try:
            stmt = await conn.prepare("SELECT $1::int * 10")
            for i in range(3):
                with pytest.raises(asyncpg.UndefinedTableError):
                    await conn.fetch(f"SELECT * FROM pgw_asyncpg_missing_{i}")
                assert await stmt.fetchval(i) == i * 10
        finally:
            await conn.close()

    asyncio.run(main())


def test_defaults_prepared_statements_and_cache(proxy, orders):
    async def main():
        conn = await connect(proxy)
        try:
            assert await conn.fetchval("SELECT 1 + $1::int", 41) == 42
            row = await conn.fetchrow(
                "SELECT $1::text AS t, $2::numeric AS n, $3::int[] AS a, $4::timestamptz AS ts",
                "é✓",
                Decimal("1.50"),
                [1, None, 3],
                dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            )
            assert dict(row) == {
                "t": "é✓",
                "n": Decimal("1.50"),
                "a": [1, None, 3],
                "ts": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            }
            # The statement cache reuses `__asyncpg_stmt_N__` names; each must keep meaning its own text.
            for i in range(30):
                await conn.execute(
                    f"INSERT INTO {orders} (id, customer, total) VALUES ($1, $2, $3)", i, f"c{i % 3}", Decimal(i)
                )
                assert await conn.fetchval(f"SELECT count(*) FROM {orders}") == i + 1
                assert await conn.fetchval(f"SELECT customer FROM {orders} WHERE id = $1", i) == f"c{i % 3}"
            rows = await conn.fetch(f"SELECT customer, sum(total) FROM {orders} GROUP BY 1 ORDER BY 1")
            assert [tuple(r) for r in rows] == [("c0", Decimal(135)), ("c1", Decimal(145)), ("c2", Decimal(155))]
            # An explicit prepared statement object, used many times.
            stmt = await conn.prepare(f"SELECT id FROM {orders} WHERE customer = $1 ORDER BY id")
            assert [r["id"] for r in await stmt.fetch("c1")] == list(range(1, 30, 3))
            assert [a.name for a in stmt.get_attributes()] == ["id"]
            # Errors leave the connection usable and do not poison the cache.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(f"INSERT INTO {orders} (id, customer) VALUES ($1, $2)", 0, "dup")
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM pgw_asyncpg_missing")
            assert await stmt.fetchval("c2") == 2
            # A transaction rolled back on error.
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with conn.transaction():
                    await conn.execute(f"DELETE FROM {orders}")
                    await conn.execute("SELECT 1/0")
            assert await conn.fetchval(f"SELECT count(*) FROM {orders}") == 30
            # A jsonb codec set on the connection (asyncpg introspects the type through the proxy).
            await conn.set_type_codec("jsonb", encoder=str, decoder=lambda s: f"decoded:{s}", schema="pg_catalog")
            await conn.execute(f"UPDATE {orders} SET meta = $1 WHERE id = 1", '{"a": 1}')
            assert await conn.fetchval(f"SELECT meta FROM {orders} WHERE id = 1") == 'decoded:{"a": 1}'
        finally:
            await conn.close()

    asyncio.run(main())


def test_executemany_and_copy(proxy, orders):
    async def main():
        conn = await connect(proxy)
        try:
            await conn.executemany(
                f"INSERT INTO {orders} (id, customer, total, items) VALUES ($1, $2, $3, $4)",
                [(i, f"m{i}", Decimal(i) / 10, [i, i + 1]) for i in range(500)],
            )
            assert await conn.fetchval(f"SELECT sum(total) FROM {orders}") == Decimal("12475.0")
            placed = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
            records = [(1000 + i, f"copy {i}\ttab", Decimal(i), placed, [i]) for i in range(3000)]
            status = await conn.copy_records_to_table(
                orders, records=records, columns=["id", "customer", "total", "placed", "items"]
            )
            assert status == "COPY 3000"
            got = await conn.fetch(
                f"SELECT id, customer, total, placed, items FROM {orders} WHERE id >= 1000 ORDER BY id"
            )
            assert [tuple(r) for r in got] == records
            # COPY out, to a file-like sink.
            chunks: list[bytes] = []

            async def sink(data: bytes) -> None:
                chunks.append(data)

            status = await conn.copy_from_query(
                f"SELECT id, customer FROM {orders} WHERE id < 3 ORDER BY id", output=sink, format="csv"
            )
            assert status == "COPY 3"
            assert b"".join(chunks) == b"0,m0\n1,m1\n2,m2\n"
            # executemany is atomic: a failing row rolls back the whole batch.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany(
                    f"INSERT INTO {orders} (id, customer) VALUES ($1, $2)", [(5000, "new"), (0, "duplicate")]
                )
            assert await conn.fetchval(f"SELECT count(*) FROM {orders} WHERE id = 5000") == 0
        finally:
            await conn.close()

    asyncio.run(main())


def test_cached_statements_after_a_column_is_added(fresh_proxy, request):
    """Two connections cache `SELECT *`; a column is added; both see the new shape (asyncpg re-prepares)."""
    table = unique("pgw_asyncpg_shape")
    direct_execute(f"DROP TABLE IF EXISTS {table}")
    direct_execute(f"CREATE TABLE {table} (id int PRIMARY KEY, customer text)")
    direct_execute(f"INSERT INTO {table} VALUES (1, 'c')")

    async def main():
        first, second = await connect(fresh_proxy), await connect(fresh_proxy)
        try:
            query = f"SELECT * FROM {table} WHERE id = $1"
            for conn in (first, second):
                assert tuple(await conn.fetchrow(query, 1)) == (1, "c")
            direct_execute(f"ALTER TABLE {table} ADD COLUMN note text DEFAULT 'added'")
            for conn in (first, second, first, second):
                assert tuple(await conn.fetchrow(query, 1)) == (1, "c", "added")
        finally:
            await first.close()
            await second.close()

    try:
        asyncio.run(main())
    finally:
        direct_execute(f"DROP TABLE IF EXISTS {table}")


def test_timeout_cancels_query(proxy):
    async def main():
        conn = await connect(proxy)
        try:
            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch("SELECT pg_sleep(5)", timeout=0.5)
            assert time.monotonic() - start < 3
            # asyncpg cancelled the query on the backend; the connection answers the next one at once.
            start = time.monotonic()
            assert await conn.fetchval("SELECT 'after timeout'") == "after timeout"
            assert time.monotonic() - start < 2
            async with conn.transaction():
                with pytest.raises(asyncio.TimeoutError):
                    await conn.execute("SELECT pg_sleep(5)", timeout=0.3)
        finally:
            await conn.close()
        # The transaction block saw the cancel and rolled back; a fresh connection is unaffected.
        conn = await connect(proxy)
        try:
            assert await conn.fetchval("SELECT $1::int * 3", 7) == 21
        finally:
            await conn.close()

    asyncio.run(main())


def test_cursors_and_listeners(proxy):
    async def main():
        conn = await connect(proxy)
        try:
            async with conn.transaction():
                # Execute with a row limit: the backend suspends the portal between batches.
                rows = [r[0] async for r in conn.cursor("SELECT g FROM generate_series(1, 1000) g", prefetch=50)]
                assert rows == list(range(1, 1001))
                cur = await conn.cursor("SELECT g FROM generate_series(1, 100) g")
                assert [r[0] for r in await cur.fetch(3)] == [1, 2, 3]
                assert await cur.forward(10) == 10
                assert (await cur.fetchrow())[0] == 14
            # What asyncpg's pool runs when a connection is released.
            await conn.reset()
            assert await conn.fetchval("SELECT 'after reset'") == "after reset"
            if pool_mode(proxy) == "session":
                received: asyncio.Queue = asyncio.Queue()
                channel = unique("pgw_asyncpg_channel")
                await conn.add_listener(channel, lambda *args: received.put_nowait(args[3]))
                other = await connect(proxy)
                try:
                    await other.execute(f"NOTIFY {channel}, 'ping ✓'")
                finally:
                    await other.close()
                assert await asyncio.wait_for(received.get(), 5) == "ping ✓"
        finally:
            await conn.close()

    asyncio.run(main())


QUERIES = [
    ("SELECT $1::int + 1", lambda i: i + 1),
    ("SELECT $1::int * 2", lambda i: i * 2),
    ("SELECT length(repeat('x', $1::int))", lambda i: i),
    ("SELECT $1::int::text || 'x'", lambda i: f"{i}x"),
]


async def _worker(proxy, n: int) -> list[str]:
    """Varied prepared queries, in a per-worker order, on one connection; returns any wrong answers."""
    problems = []
    conn = await connect(proxy)
    try:
        order = QUERIES[n % 4 :] + QUERIES[: n % 4]
        for round_ in range(10):
            for sql, expected in order:
                value = n * 1000 + round_
                got = await conn.fetchval(sql, value)
                if got != expected(value):
                    problems.append(f"task {n}: {sql} with {value} gave {got!r}")
            async with conn.transaction():
                a = await conn.fetchval("SELECT $1::int", n)
                b = await conn.fetchval("SELECT $1::int + $2::int", a, round_)
                if b != n + round_:
                    problems.append(f"task {n}: transaction gave {b}")
    finally:
        await conn.close()
    return problems


def test_fifty_concurrent_connections_transaction_mode(tx_proxy):
    async def main():
        return await asyncio.gather(*(_worker(tx_proxy, n) for n in range(50)))

    results = asyncio.run(main())
    assert [p for r in results for p in r] == []


def test_create_pool(tx_proxy, orders):
    async def main():
        async with asyncpg.create_pool(tx_proxy.url(), min_size=5, max_size=20, timeout=10) as pool:

            async def one(i: int) -> int:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {orders} (id, customer, total) VALUES ($1, $2, $3)", i, "pool", Decimal(i)
                    )
                    return await conn.fetchval(f"SELECT total FROM {orders} WHERE id = $1", i)

            totals = await asyncio.gather(*(one(i) for i in range(200)))
            assert totals == [Decimal(i) for i in range(200)]
            assert await pool.fetchval(f"SELECT count(*) FROM {orders}") == 200

    asyncio.run(main())
