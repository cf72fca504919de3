"""The isolation oracle: what pgwarden returns to tenant acme equals what the same query returns
from a database holding only acme's rows (with the masks applied), for generated queries."""

from __future__ import annotations

import os
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from tests.harness import PG_PORT
from tests.policy.conftest import SCHEMA, policy_proxy
from tests.policy.oracle_queries import queries

FULL_DB, COPY_DB = "pgw_policy_oracle", "pgw_policy_acme"
DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={{}}"
EXAMPLES = int(os.environ.get("PGWARDEN_ORACLE_EXAMPLES", 200))
TENANTS = ("acme", "globex", "initech")
NAMES = ("Ann", "Bob", "Cyd", "France", "Abe", "Bea", None)


def _rows() -> tuple[list[tuple], list[tuple]]:
    """Customers and orders of three tenants, ids interleaved, names shared across tenants, some NULLs."""
    customers, orders = [], []
    for i in range(1, 19):
        tenant = TENANTS[i % 3]
        name = NAMES[i % len(NAMES)]
        email = None if i % 5 == 0 else f"{(name or 'x').lower()}{i}@{tenant}.{('us', 'fr', 'io')[(i // 3) % 3]}"
        ssn = None if i % 7 == 0 else f"{i % 9}{i % 9}{i % 9}-{i:02d}-1{i:03d}"
        phone = None if i % 4 == 0 else f"555-01{i:02d}"
        born = None if i % 6 == 0 else f"19{60 + i * 2}-0{1 + i % 9}-1{i % 9}"
        customers.append((i, tenant, name, email, ssn, phone, born))
    for j in range(1, 31):
        customer = customers[(j * 7) % len(customers)]
        tenant = customer[1] if j % 11 else TENANTS[(TENANTS.index(customer[1]) + 1) % 3]  # a few cross refs
        total = None if j % 13 == 0 else Decimal(j * 37 % 250) + Decimal("0.50")
        orders.append((100 + j, tenant, customer[0] if j % 9 else None, total))
    return customers, orders


COUNTRIES = [("us", "United States"), ("fr", "France"), ("io", "Ann")]


def _load(db: str, only_acme: bool) -> None:
    customers, orders = _rows()
    if only_acme:
        customers = [c[:4] + ("****",) + c[5:] for c in customers if c[1] == "acme"]  # ssn as role app sees it
        orders = [o for o in orders if o[1] == "acme"]
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {db} with (force)")
        conn.execute(f"create database {db}")
    with psycopg.connect(DIRECT.format(db), autocommit=True) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany("insert into customers values (%s, %s, %s, %s, %s, %s, %s)", customers)
            cur.executemany("insert into orders values (%s, %s, %s, %s)", orders)
            cur.executemany("insert into countries values (%s, %s)", COUNTRIES)


@pytest.fixture(scope="module")
def oracle_dbs():
    _load(FULL_DB, only_acme=False)
    _load(COPY_DB, only_acme=True)
    yield
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        for db in (FULL_DB, COPY_DB):
            conn.execute(f"drop database if exists {db} with (force)")


def _normal(rows) -> list:
    def value(v):
        return str(v.normalize()) if isinstance(v, Decimal) else repr(v)

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def test_the_acme_copy_holds_what_acme_may_see(oracle_dbs):
    """The oracle's reference is right: only acme's rows, every ssn masked, and it is not empty."""
    with psycopg.connect(DIRECT.format(COPY_DB)) as copy:
        assert copy.execute(
            "select distinct tenant_id from customers union select tenant_id from orders"
        ).fetchall() == [("acme",)]
        assert copy.execute("select distinct ssn from customers").fetchall() == [("****",)]
        assert copy.execute("select count(*) from customers").fetchone()[0] >= 5


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_isolation_oracle(oracle_dbs, tmp_path_factory, mode):
    proxy = policy_proxy(tmp_path_factory.mktemp(f"oracle-{mode}"), mode)
    refused: list[str] = []
    seen: list[str] = []
    try:
        with (
            psycopg.connect(proxy.dsn(user="acme_app", dbname=FULL_DB), autocommit=True) as through,
            psycopg.connect(DIRECT.format(COPY_DB), autocommit=True) as copy,
        ):

            @settings(
                max_examples=EXAMPLES // 2 if mode == "session" else EXAMPLES,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(queries())
            def check(sql: str) -> None:
                seen.append(sql)
                expected = _normal(copy.execute(sql).fetchall())
                try:
                    got = _normal(through.execute(sql).fetchall())
                except psycopg.errors.InsufficientPrivilege as exc:
                    refused.append(f"{sql}: {exc}")
                    raise AssertionError(f"OVER-REFUSAL of a legitimate query: {sql}: {exc}")
                assert got == expected, sql

            check()
            # the oracle can tell a wrong answer: globex's view of the same queries differs from acme's copy
            with psycopg.connect(proxy.dsn(user="globex_app", dbname=FULL_DB), autocommit=True) as other:
                differ = [
                    sql
                    for sql in seen[:50]
                    if _normal(other.execute(sql).fetchall()) != _normal(copy.execute(sql).fetchall())
                ]
    finally:
        proxy.stop()
    assert not refused
    assert len(set(seen)) >= min(EXAMPLES // 4, 40), "the generator explored little"
    assert len(differ) >= 10, "the oracle's queries cannot tell one tenant from another"


WRONG_RESULTS = {
    "cte-in-a-parenthesized-union-branch": "(with customers as (select 1 as id) select id from customers) "
    "union all (select id from customers)",
}


@pytest.mark.parametrize("name", sorted(WRONG_RESULTS))
def test_fixed_examples_agree_with_the_copy(oracle_dbs, tmp_path_factory, name):
    proxy = policy_proxy(tmp_path_factory.mktemp("oracle-fixed"), "transaction")
    try:
        with (
            psycopg.connect(proxy.dsn(user="acme_app", dbname=FULL_DB), autocommit=True) as through,
            psycopg.connect(DIRECT.format(COPY_DB), autocommit=True) as copy,
        ):
            sql = WRONG_RESULTS[name]
            assert _normal(through.execute(sql).fetchall()) == _normal(copy.execute(sql).fetchall())
    finally:
        proxy.stop()
