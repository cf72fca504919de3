"""The slow-query log with a real pg_sleep through asyncpg, and EXPLAIN on a control-plane connection."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import asyncpg
import pytest

from proxy.ops.slowlog import SlowLog, SlowQueryConfig
from tests.harness import PG_PORT

DSN = {"host": "127.0.0.1", "port": PG_PORT, "user": "postgres"}


async def timed(conn: asyncpg.Connection, sql: str, *args) -> tuple[float, int]:
    started = time.perf_counter()
    rows = await conn.fetch(sql, *args)
    return time.perf_counter() - started, len(rows)


@pytest.mark.integration  # a real PostgreSQL
def test_slow_selects_are_logged_with_their_plan_and_fast_ones_not(tmp_path):
    path = tmp_path / "slow.jsonl"

    async def body() -> None:
        slow = SlowLog(SlowQueryConfig(threshold_ms=150, path="slow.jsonl", explain=True), tmp_path, DSN)
        await slow.start()
        conn = await asyncpg.connect(**DSN, database="postgres")
        try:
            for sql in (
                "select pg_sleep(0.2), relname from pg_class where relname in ('pg_class', 'secret-a')",
                "select 1, 'secret-fast'",
                "select pg_sleep(0.25), relname from pg_class where relname in ('pg_class', 'secret-b')",
            ):
                duration, rows = await timed(conn, sql)
                slow.observe(sql, duration, "primary", rows, "postgres")
            duration, rows = await timed(conn, "select pg_sleep($1::float8)", 0.2)
            slow.observe("select pg_sleep($1::float8)", duration, "replica", rows, "postgres")
        finally:
            await conn.close()
        await slow.stop()
        assert slow.explained == 1  # the second pg_sleep has the first one's shape: explained once a minute

    asyncio.run(body())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    shape = "select pg_sleep(?), relname from pg_class where relname in (?, ?)"
    assert [r["query"] for r in records] == [shape, shape, "select pg_sleep($1::float8)"]
    first, second, param = records
    assert first["fingerprint"] == second["fingerprint"] != param["fingerprint"]
    assert first["duration_ms"] >= 150 and first["rows"] == 1 and first["database"] == "postgres"
    plan = first["plan"][0]["Plan"]
    assert plan["Relation Name"] == "pg_class"
    conditions = [v for k, v in _walk(plan) if k.endswith("Cond")]
    assert conditions and set(conditions) == {"(relname = ANY (?::name[]))"}
    assert "plan" not in second and "plan" not in param and param["route"] == "replica"
    assert "secret" not in path.read_text()  # neither in the text nor in the plan


def _walk(node):
    for key, value in node.items():
        yield key, value
        for child in value if key == "Plans" else ():
            yield from _walk(child)


def test_without_a_path_slow_statements_go_to_the_process_log(caplog):
    async def body() -> None:
        slow = SlowLog(SlowQueryConfig(threshold_ms=50), None, None)
        await slow.start()
        slow.observe("update t set a = 42", 0.06, "primary", 3, "shop")
        slow.observe("update t set a = 42", 0.01, "primary", 3, "shop")
        await slow.stop()

    with caplog.at_level(logging.WARNING, logger="pgwarden.slow"):
        asyncio.run(body())
    logged = [m for m in caplog.messages if m.startswith("slow statement: ")]
    assert len(logged) == 1
    record = json.loads(logged[0].removeprefix("slow statement: "))
    assert record["query"] == "update t set a = ?" and record["duration_ms"] == 60.0 and record["rows"] == 3


def test_an_unreachable_control_plane_is_noted_in_the_record(tmp_path):
    path = tmp_path / "slow.jsonl"

    async def body() -> None:
        slow = SlowLog(
            SlowQueryConfig(threshold_ms=1, path=path, explain=True),
            None,
            {"host": "127.0.0.1", "port": 1, "user": "postgres"},
        )
        await slow.start()
        slow.observe("select 1", 0.01, "primary", 1, "postgres")
        await slow.stop()

    asyncio.run(body())
    record = json.loads(path.read_text())
    assert "error" in record["plan"] and record["query"] == "select ?"
