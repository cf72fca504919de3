"""proxy.routing.volatility against a real catalog: functions, overloads, views, unlogged tables, operators, policies."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from proxy.routing.volatility import ReadClassifier, Volatility, read_volatility
from rewriter.readonly import READ, WRITE, read_shape
from tests.harness import PG_HOST, PG_PORT

DB = f"pgw_readonly_{os.getpid()}"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "orm_statements.jsonl.gz"

SCHEMA = """
create schema ro;
create sequence ro.s;
create function ro.imm(int) returns int immutable language sql as 'select $1';
create function ro.stab(int) returns int stable language sql as 'select $1';
create function ro.vol(int) returns int volatile language sql as 'select $1';
create function ro.over(int) returns int immutable language sql as 'select $1';
create function ro.over(text) returns text volatile language sql as 'select $1';
create function public.twice(int) returns int immutable language sql as 'select 2 * $1';
create function ro.twice(int) returns int volatile language sql as 'select 2 * $1';
create function ro.vplus(int, int) returns int volatile language sql as 'select $1 + $2';
create function ro.iplus(int, int) returns int immutable language sql as 'select $1 + $2';
create operator ro.@+@ (leftarg = int, rightarg = int, function = ro.vplus);
create operator ro.@-@ (leftarg = int, rightarg = int, function = ro.iplus);
create aggregate ro.vsum(int) (sfunc = ro.vplus, stype = int, initcond = '0');
create table ro.plain (a int, vol2 int);
insert into ro.plain (a) values (1), (2);
create function ro.vrow(ro.plain) returns int volatile language sql as 'select $1.a';
create function ro.vol2(int, int) returns int volatile language sql as 'select $1';
create function ro.vdef(ro.plain, b int = 0) returns int volatile language sql as 'select $2';
create view ro.vnext as select nextval('ro.s') as n;
create view ro.vover as select n from ro.vnext;
create view ro.vlock as select a from ro.plain for update;
create view ro.vplain as select a, ro.stab(a) as b from ro.plain;
create materialized view ro.mrandom as select random() as r;
create unlogged table ro.ul (a int);
create view ro.vul as select a from ro.ul;
create table ro.policed (a int);
alter table ro.policed enable row level security;
create policy p on ro.policed using (ro.vol(a) > 0);
create table ro.parted (a int) partition by range (a);
create unlogged table ro.parted_1 partition of ro.parted for values from (0) to (10);
"""

CASES = [
    # (statement, route, reason substring)
    ("select ro.imm(a), ro.stab(a) from ro.plain", READ, "read"),
    ("select ro.vol(1)", WRITE, "calls volatile function ro.vol()"),
    ("select a from ro.plain order by ro.vol(a)", WRITE, "ro.vol()"),
    ("select ro.over(1)", WRITE, "calls volatile function ro.over()"),  # one overload is volatile
    ("select twice(1)", WRITE, "calls volatile function twice()"),  # bare: the worst over schemas
    ("select public.twice(1)", READ, "read"),
    ("select ro.twice(1)", WRITE, "ro.twice()"),
    ("select nextval('ro.s')", WRITE, "calls volatile function nextval()"),
    ("select no_such_function(1)", WRITE, "unknown function no_such_function()"),
    ("select ro.no_such_function(1)", WRITE, "unknown function"),
    ("select * from ro.vnext", WRITE, "reads view ro.vnext that calls a volatile function"),
    ("select * from ro.vover", WRITE, "reads view ro.vover that calls a volatile function"),
    ("select * from vover", WRITE, "view vover"),
    ("select * from ro.vplain", READ, "read"),
    ("select * from ro.vlock", WRITE, "ro.vlock"),  # its rows are locked: a FOR UPDATE in the view
    ("select * from ro.mrandom", WRITE, "ro.mrandom"),
    ("select * from ro.ul", WRITE, "reads unlogged table ro.ul"),
    ("select * from ro.vul", WRITE, "ro.vul, which reads an unlogged"),
    ("select * from ro.parted", WRITE, "ro.parted, which reads an unlogged"),
    ("select * from ro.policed", WRITE, "row security policy"),
    ("select 1 operator(ro.@+@) 2", WRITE, "operator ro.@+@"),
    ("select 1 operator(ro.@-@) 2", READ, "read"),
    ("select ro.vsum(a) from ro.plain", WRITE, "ro.vsum()"),
    ("select p.vrow from ro.plain p", WRITE, "field notation"),
    ("select p.a from ro.plain p", READ, "read"),
    ("select p.vol2 from ro.plain p", READ, "read"),  # a column; ro.vol2() takes two arguments
    ("select p.vdef from ro.plain p", WRITE, "field notation"),  # one argument and a default
    ("select * from tmp_t", WRITE, "temporary table tmp_t"),
    ("select count(*), max(a), now(), lower('X') from ro.plain where a between 1 and 2", READ, "read"),
]


async def _prepare() -> Volatility:
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    try:
        await admin.execute(f"drop database if exists {DB}")
        await admin.execute(f"create database {DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=DB)
    try:
        await conn.execute(SCHEMA)
        await conn.execute("create temp table tmp_t (a int)")
        return await read_volatility(conn)
    finally:
        await conn.close()


async def _drop() -> None:
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    try:
        await admin.execute(f"drop database if exists {DB}")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def volatility() -> Iterator[Volatility]:
    try:
        yield asyncio.run(_prepare())
    finally:
        asyncio.run(_drop())


@pytest.mark.parametrize(("sql", "route", "reason"), CASES)
def test_judgement(volatility: Volatility, sql: str, route: str, reason: str) -> None:
    judgement = ReadClassifier(volatility).judge(sql)
    assert (judgement.route, reason in judgement.reason) == (route, True), judgement


def test_catalog_keys(volatility: Volatility) -> None:
    assert volatility.functions["ro.over"] == "v" and volatility.functions["public.twice"] == "i"
    assert volatility.functions["ro.stab"] == "s" and volatility.functions["pg_catalog.lower"] == "i"
    assert volatility.operators["ro.@-@"] == "i" and volatility.operators["@+@"] == "v"
    assert volatility.operators["="] in ("i", "s")  # no "=" is volatile
    assert "ro.plain" not in volatility.relations and "ro.vplain" not in volatility.relations


async def _run_read_only(sqls: list[str]) -> list[str | None]:
    """Each statement in a READ ONLY transaction: None when PostgreSQL ran it, else the error's class name."""
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=DB)
    out: list[str | None] = []
    try:
        for sql in sqls:
            try:
                async with conn.transaction(readonly=True):
                    await conn.fetch(sql)
                out.append(None)
            except asyncpg.PostgresError as exc:
                out.append(type(exc).__name__)
    finally:
        await conn.close()
    return out


def test_reads_run_read_only_and_the_view_does_not(volatility: Volatility) -> None:
    """Every statement judged READ runs in a read-only transaction; the views over nextval() do not."""
    reads = [sql for sql, route, _ in CASES if route == READ]
    views = ["select * from ro.vnext", "select * from ro.vover"]
    results = asyncio.run(_run_read_only(reads + views))
    assert results[: len(reads)] == [None] * len(reads)
    assert results[len(reads) :] == ["ReadOnlySQLTransactionError"] * 2


WRITES = ("insert", "update", "delete", "create", "alter", "drop", "truncate")


def test_orm_corpus() -> None:
    seen: dict[str, None] = {}
    with gzip.open(CORPUS, "rt") as lines:
        for line in lines:
            seen.setdefault(json.loads(line)["sql"], None)
            if len(seen) >= 3000:
                break
    routes = {READ: 0, WRITE: 0}
    for sql in seen:
        shape = read_shape(sql)
        routes[shape.route] = routes.get(shape.route, 0) + 1
        if sql.lstrip().lower().startswith(WRITES):
            assert shape.route != READ, sql
    assert routes[READ] > 300 and routes[WRITE] > 300, routes  # the corpus has both, and both are found
