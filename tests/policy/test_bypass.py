"""Attacks on tenant isolation and masking through the real proxy: each must leak nothing.

A leak is any value that tenant acme must not see: a globex row's values, or acme's own
unmasked SSNs. Every attack either is refused (SQLSTATE 42501 with a hint, the
connection staying usable) or returns rows free of those values.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.policy.conftest import DB, connect, reset_data

DIRECT = f"host=127.0.0.1 port=5432 user=postgres dbname={DB}"
LEAKS = ("Gus", "gus@globex.io", "333-33-3333", "555-0103", "999.99", "globex",
         "111-11-1111", "222-22-2222", "s3cr3t")

READ_ATTACKS = {
    "or-true": "select * from customers where true or tenant_id = 'globex'",
    "subquery": "select * from (select * from customers) c where tenant_id = 'globex' or true",
    "scalar-subquery": "select (select string_agg(name || ssn, ',') from customers)",
    "exists": "select 1 from countries where exists (select 1 from customers where tenant_id = 'globex')",
    "cte-shadowing": "with customers as (select * from public.customers) select * from customers",
    "cte-named-like-table": "with orders as (select 1 as x) select * from public.orders, orders",
    "recursive-cte": "with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) "
                     "select c.* from customers c, r",
    "union": "select name, ssn from customers union all select name, ssn from public.customers",
    "lateral": "select * from customers c, lateral (select * from orders o where o.customer_id = c.id) x",
    "right-join": "select c.*, o.* from customers c right join orders o on o.customer_id = c.id",
    "full-join": "select c.*, o.* from customers c full join orders o on true",
    "table": "table customers",
    "only": "select * from only customers",
    "whole-row-jsonb": "select to_jsonb(c) from customers c",
    "whole-row-text": "select c::text from customers c",
    "whole-row-json": "select row_to_json(c.*) from public.customers c",
    "qualified": 'select * from "public"."customers"',
    "unicode-escape": 'select * from U&"cust\\006fmers"',
    "dollar-quoting": "select $q$x$q$ as a, * from customers where name <> $$nobody$$",
    "comments": "select * from /* hi */ customers -- where false\n where true",
    "no-spaces": "select*from customers/**/where/**/true",
    "mask-where": "select id from customers where ssn like '1%' or ssn like '3%'",
    "mask-order": "select name from customers order by ssn",
    "mask-functions": "select length(ssn), md5(ssn), ssn::bytea, upper(ssn) from customers",
    "mask-join": "select a.name from customers a join customers b on a.ssn = b.ssn",
    "mask-group": "select ssn, count(*) from customers group by ssn",
    "aggregate": "select count(*), sum(total), max(total) from orders",
    "error-oracle-division": "select 1 / (case when (select count(*) from customers "
                             "where tenant_id = 'globex') > 0 then 0 else 1 end)",
    "error-oracle-cast": "select ssn::int from customers",
    "window": "select name, count(*) over () from customers",
    "cursor-text-function": "select * from customers where name in (select name from customers)",
}

REFUSED = {
    "unlisted-table": "select * from secrets",
    "query-to-xml": "select query_to_xml('select * from customers', true, true, '')",
    "read-file": "select pg_read_file('/etc/passwd')",
    "ls-dir": "select pg_ls_dir('.')",
    "lo-import": "select lo_import('/etc/passwd')",
    "dblink": "select * from dblink('dbname=postgres', 'select 1') as t(a int)",
    "set-config-tenant": "select set_config('pgwarden.tenant', 'globex', false)",
    "pg-stats": "select * from pg_stats where tablename = 'customers'",
    "pg-statistic": "select * from pg_statistic",
    "pg-stat-activity": "select query from pg_stat_activity",
    "set-role": "set role postgres",
    "session-authorization": "set session authorization postgres",
    "reset-all": "reset all",
    "truncate": "truncate orders",
    "ddl": "create table pgw_attack (x int)",
    "do": "do $$ begin perform 1; end $$",
    "grant": "grant select on secrets to public",
    "pg-temp": "select * from pg_temp.customers",
    "copy-from": "copy customers from stdin",
    "merge": "merge into orders o using (select 12 as id) s on o.id = s.id when matched then delete",
    "multi-statement": "select 1; select * from secrets",
    "security-definer": "select * from pgw_all_customers()",
    "view": "select * from pgw_v_customers",
    "partition": "select * from pgw_part_globex",
    "evil-schema": "select * from pgw_evil.customers",
}


@pytest.fixture(scope="module", autouse=True)
def attack_objects(shop_db):
    """Objects an attacker would love: a SECURITY DEFINER function, a view, partitions, a schema."""
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute("""
            create or replace function pgw_all_customers() returns setof customers
              language sql security definer as 'select * from customers';
            create or replace view pgw_v_customers as select * from customers;
            drop table if exists pgw_part;
            create table pgw_part (id int, tenant_id text) partition by list (tenant_id);
            create table pgw_part_globex partition of pgw_part for values in ('globex');
            insert into pgw_part values (1, 'globex');
            create schema if not exists pgw_evil;
            create table if not exists pgw_evil.customers (name text);
            delete from pgw_evil.customers; insert into pgw_evil.customers values ('Gus');
        """)
    yield


def _assert_clean(rows, sql: str = "") -> None:
    """No secret in `rows` (a value the attacker wrote in the statement itself is no secret)."""
    text = repr(rows)
    leaked = [value for value in LEAKS if value in text and value not in sql]
    assert not leaked, f"leaked {leaked}: {text[:300]}"


@pytest.mark.parametrize("name", sorted(READ_ATTACKS))
def test_read_attacks_leak_nothing(guarded, name):
    with connect(guarded, "acme_app") as conn:
        try:
            rows = conn.execute(READ_ATTACKS[name]).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            assert exc.diag.message_hint, "a refusal says what to change"
            rows = []
        except psycopg.Error as exc:  # an error must not carry a secret either
            _assert_clean(str(exc) + str(exc.diag.message_detail), READ_ATTACKS[name])
            rows = []
        _assert_clean(rows, READ_ATTACKS[name])
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_dangerous_statements_are_refused_and_the_connection_stays_usable(guarded, name):
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(REFUSED[name])
        assert info.value.diag.message_hint and "rule" in info.value.diag.message_hint
        assert conn.execute("select count(*) from customers").fetchone() == (2,)


def _globex_state():
    with psycopg.connect(DIRECT) as conn:
        return (conn.execute("select name, ssn from customers where tenant_id = 'globex'").fetchall(),
                conn.execute("select id, total from orders where tenant_id = 'globex'").fetchall())


WRITE_ATTACKS = {
    "update-from": "update orders o set total = 0 from customers c where c.id = o.customer_id",
    "delete-using": "delete from orders o using customers c where c.id = o.customer_id and o.id = 12",
    "upsert-other-tenants-key": "insert into customers (id, name) values (3, 'pwned') "
                                "on conflict (id) do update set name = 'pwned'",
    "data-modifying-cte": "with d as (delete from orders where id = 12 returning *) select * from d",
    "explain-analyze-delete": "explain analyze delete from orders where tenant_id = 'globex'",
    "update-returning-mask": "update customers set name = name returning ssn",
    "delete-all": "delete from orders",
}


@pytest.mark.parametrize("name", sorted(WRITE_ATTACKS))
def test_write_attacks_never_touch_another_tenant(guarded, name):
    reset_data()
    before = _globex_state()
    with connect(guarded, "acme_app") as conn:
        try:
            with conn.transaction():
                cur = conn.execute(WRITE_ATTACKS[name])
                _assert_clean(cur.fetchall() if cur.description else [], WRITE_ATTACKS[name])
        except psycopg.errors.InsufficientPrivilege:
            pass
        except psycopg.errors.UniqueViolation as exc:
            _assert_clean(str(exc) + str(exc.diag.message_detail))
    assert _globex_state() == before
    reset_data()


def test_cursors_and_copy_show_only_the_tenant_masked(guarded):
    with connect(guarded, "acme_app") as conn:
        with conn.transaction():
            conn.execute("declare c cursor for select * from customers")
            _assert_clean(conn.execute("fetch all from c").fetchall())
        with conn.cursor().copy("copy customers to stdout") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        assert b"Ann" in data and b"****" in data
        _assert_clean(data.decode())


def test_search_path_cannot_redirect_a_name(guarded):
    with connect(guarded, "acme_app") as conn:
        conn.execute("set search_path = pgw_evil, public")
        try:
            rows = conn.execute("select * from customers").fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = []
        _assert_clean(rows)


def test_sql_prepare_is_rewritten_or_refused(guarded):
    with connect(guarded, "acme_app") as conn:
        try:
            conn.execute("prepare p1 as select * from customers")
            rows = conn.execute("execute p1").fetchall()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported):
            rows = []
        _assert_clean(rows)
