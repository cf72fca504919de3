"""The isolation oracle: what pgwarden returns to tenant acme equals what the same query returns
from a database holding only acme's rows (with the masks applied), for generated queries."""

from __future__ import annotations

import os
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.policy.conftest import DATA, DB, SCHEMA, connect, reset_data

COPY_DB = f"{DB}_acme"
DIRECT = "host=127.0.0.1 port=5432 user=postgres dbname={}"

COLUMNS = {"customers": ["id", "name", "email", "ssn", "phone", "born"],
           "orders": ["id", "customer_id", "total"], "countries": ["code", "name"]}
FILTERS = {"customers": ["c.id > 1", "c.name like 'A%'", "c.ssn = '****'", "c.email like '%acme%'",
                         "c.id in (select customer_id from orders)", "true", "c.born > '1985-01-01'"],
           "orders": ["o.total > 60", "o.customer_id = 1", "true", "o.id < 12"]}


@pytest.fixture(scope="module")
def acme_copy(shop_db):
    """The shop with only acme's rows, ssn masked as role app sees it."""
    reset_data()  # the shop as it started, whatever tests ran before
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {COPY_DB} with (force)")
        conn.execute(f"create database {COPY_DB}")
    with psycopg.connect(DIRECT.format(COPY_DB), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(DATA)
        conn.execute("delete from customers where tenant_id <> 'acme'")
        conn.execute("delete from orders where tenant_id <> 'acme'")
        conn.execute("update customers set ssn = '****'")
    yield COPY_DB
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {COPY_DB} with (force)")


@st.composite
def queries(draw) -> str:
    shape = draw(st.sampled_from(["single", "join", "aggregate", "union", "subquery", "exists"]))
    cust_cols = draw(st.lists(st.sampled_from(COLUMNS["customers"]), min_size=1, max_size=4, unique=True))
    c_filter = draw(st.sampled_from(FILTERS["customers"]))
    o_filter = draw(st.sampled_from(FILTERS["orders"]))
    select = ", ".join(f"c.{col}" for col in cust_cols)
    if shape == "single":
        return f"select {select} from customers c where {c_filter}"
    if shape == "join":
        kind = draw(st.sampled_from(["join", "left join", "right join", "full join"]))
        return (f"select {select}, o.total from customers c {kind} orders o "
                f"on o.customer_id = c.id where ({c_filter} or c.id is null) and ({o_filter} or o.id is null)")
    if shape == "aggregate":
        group = cust_cols[0]
        return (f"select c.{group}, count(*), sum(o.total) from customers c join orders o "
                f"on o.customer_id = c.id where {o_filter} group by c.{group}")
    if shape == "union":
        op = draw(st.sampled_from(["union", "union all", "except", "intersect"]))
        return f"select c.name from customers c where {c_filter} {op} select co.name from countries co"
    if shape == "subquery":
        return (f"select {select}, (select count(*) from orders o where o.customer_id = c.id and {o_filter}) "
                f"from customers c")
    return f"select {select} from customers c where exists (select 1 from orders o where o.customer_id = c.id and {o_filter})"


def _normal(rows) -> list:
    return sorted((tuple(str(v) if not isinstance(v, Decimal) else str(v.normalize()) for v in row)
                   for row in rows), key=repr)


@pytest.mark.parametrize("mode", ["transaction"])
def test_isolation_oracle(shop_db, acme_copy, tmp_path_factory, mode):
    from tests.policy.conftest import policy_proxy
    proxy = policy_proxy(tmp_path_factory.mktemp("oracle"), mode)
    examples = int(os.environ.get("PGWARDEN_ORACLE_EXAMPLES", "200"))
    try:
        with connect(proxy, "acme_app") as through, \
                psycopg.connect(DIRECT.format(acme_copy), autocommit=True) as copy:

            @settings(max_examples=examples, deadline=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(queries())
            def check(sql: str) -> None:
                expected = _normal(copy.execute(sql).fetchall())
                got = _normal(through.execute(sql).fetchall())
                assert got == expected, sql

            check()
    finally:
        proxy.stop()
