"""Attacks on tenant isolation and masking through the real proxy and PostgreSQL: each must leak nothing.

A leak is any value tenant acme must not see: a globex row's values, or acme's own unmasked
SSNs. Every attack is either refused (SQLSTATE 42501 with a hint, the connection staying
usable) or returns rows free of those values; writes are checked against PostgreSQL directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import asyncpg
import psycopg
import pytest

from tests.harness import PG_PORT
from tests.policy import bypass_shop
from tests.policy.conftest import DB, TOKEN_KEY, connect, policy_proxy, reset_data

DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={DB}"
LEAKS = (
    "Gus",
    "gus@globex.io",
    "333-33-3333",
    "555-0103",
    "999.99",
    "globex",
    "111-11-1111",
    "222-22-2222",
    "s3cr3t",
    "globex-event",
)

READ_ATTACKS = {
    "or-true": "select * from customers where true or tenant_id = 'globex'",
    "or-id": "select * from customers where id = 3 or id = 3",
    "tenant-not-equal": "select * from customers c where c.tenant_id <> 'acme'",
    "subquery": "select * from (select * from customers) c where tenant_id = 'globex' or true",
    "scalar-subquery": "select (select string_agg(name || ssn, ',') from customers)",
    "any-array": "select * from customers c where c.id = any(array(select id from public.customers))",
    "exists": "select 1 from countries where exists (select 1 from customers where tenant_id = 'globex')",
    "correlated-exists": "select * from customers where exists "
    "(select 1 from orders where orders.tenant_id <> customers.tenant_id)",
    "cte-shadowing": "with customers as (select * from public.customers) select * from customers",
    "cte-named-like-table": "with orders as (select 1 as x) select * from public.orders, orders",
    "recursive-cte": "with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) "
    "select c.* from customers c, r",
    "recursive-cte-walk": "with recursive r as (select * from customers where id = 3 union all "
    "select c.* from customers c join r on c.id = r.id + 1) select * from r",
    "union": "select name, ssn from customers union all select name, ssn from public.customers",
    "union-tenant": "select tenant_id from customers union select tenant_id from orders",
    "lateral": "select * from customers c, lateral (select * from orders o where o.customer_id = c.id) x",
    "left-join-lateral": "select * from (values (1)) v(x) left join lateral (select * from customers) c on true",
    "right-join": "select c.*, o.* from customers c right join orders o on o.customer_id = c.id",
    "full-join": "select c.*, o.* from customers c full join orders o on true",
    "full-join-using-tenant": "select * from customers full outer join orders using (tenant_id)",
    "natural-join": "select * from customers natural join orders",
    "cross-join-where": "select * from orders join customers on true where customers.id = 3",
    "table": "table customers",
    "table-in-subquery": "select * from (table customers) t",
    "only": "select * from only customers",
    "for-update": "select * from customers for update",
    "whole-row-jsonb": "select to_jsonb(c) from customers c",
    "whole-row-text": "select c::text from customers c",
    "whole-row-json": "select row_to_json(c.*) from public.customers c",
    "whole-row-bare": "select customers from customers",
    "whole-row-format": "select format('%s', c) from customers c",
    "whole-row-agg": "select json_agg(c), array_agg(c) from customers c",
    "whole-row-star": "select (c).* from customers c",
    "populate-record": "select * from json_populate_record(null::customers, "
    "(select row_to_json(c) from public.customers c where id = 3))",
    "values-subquery": "values ((select name from customers where id = 3))",
    "qualified": 'select * from "public"."customers"',
    "upper-case": "select * from PUBLIC.CUSTOMERS",
    "spaced": "select * from public . customers",
    "unicode-escape": 'select * from U&"cust\\006fmers"',
    "dollar-quoting": "select $q$x$q$ as a, * from customers where name <> $$nobody$$",
    "dollar-quote-hides-quote": "select $q$ ' $q$, (select string_agg(name || ssn, ',') from customers) -- '",
    "backslash-string": "select 'a\\', (select string_agg(ssn, ',') from public.customers) --'",
    "backslash-union": "select * from countries where code = 'us\\' union select name, ssn from customers --'",
    "comments": "select * from /* hi */ customers -- where false\n where true",
    "line-comment-hides-union": "select * from countries where code = 'us' -- ' union select name, ssn from customers",
    "escape-string-hides-union": "select * from countries where code = E'us\\' "
    "union select name, ssn from customers --'",
    "nested-comment": "select * from countries /* /* */, customers /* */ */",
    "no-spaces": "select*from customers/**/where/**/true",
    "mask-where": "select id from customers where ssn like '1%' or ssn like '3%'",
    "mask-equal": "select * from customers where ssn = '111-11-1111'",
    "mask-order": "select name from customers order by ssn",
    "mask-functions": "select length(ssn), md5(ssn), ssn::bytea, upper(ssn) from customers",
    "mask-aggregates": "select min(ssn), max(ssn), string_agg(ssn, ',') from customers",
    "mask-window": "select lag(ssn) over (order by id) from customers",
    "mask-distinct-on": "select distinct on (ssn) name from customers",
    "mask-join": "select a.name from customers a join customers b on a.ssn = b.ssn",
    "mask-group": "select ssn, count(*) from customers group by ssn",
    "aggregate": "select count(*), sum(total), max(total) from orders",
    "window": "select name, count(*) over () from customers",
    "in-subquery": "select * from customers where name in (select name from customers)",
    "text-search": "select * from customers where to_tsvector(name) @@ 'gus'",
    "regex": "select * from customers where name ~ '^G'",
    "error-oracle-division": "select 1 / (case when (select count(*) from customers "
    "where tenant_id = 'globex') > 0 then 0 else 1 end)",
    "error-oracle-division-row": "select * from customers where 1 / (case when name = 'Gus' then 0 else 1 end) = 1",
    "error-oracle-cast": "select ssn::int from customers",
    "explain-analyze-select": "explain analyze select * from customers where name = 'Gus'",
    "explain-verbose": "explain verbose select * from customers",
    "column-aliases": "select e from customers c(a, b, cc, d, e)",
    "lateral-masked": "select * from customers, lateral (select ssn) x",
    "alias-named-like-table": "select * from customers as orders, public.orders o2 where orders.id = o2.customer_id",
    "parenthesized-join": "select * from (customers c join orders o on true)",
    "mask-row-compare": "select * from customers where (ssn, id) > ('1', 0)",
    "mask-in-subquery": "select * from customers where ssn in (select ssn from public.customers)",
    "mask-xml": "select xmlelement(name x, c.ssn) from customers c",
    "mask-grouping-sets": "select ssn from customers group by grouping sets ((ssn), ())",
    "cte-in-a-later-subquery": "select * from customers c, (with customers as (select 1 as id) "
    "select * from customers) a",
    "cte-in-exists": "select * from customers where exists (with customers as (select 1) select 1 from customers)",
    "cte-quoted-other-case": 'with "Customers" as (select 1 as id) select * from customers',
    "materialized-cte": "with c as materialized (select * from customers) select * from c",
    "cursor-text-function": "select * from customers where name in (select name from customers)",
    "pg-settings-tenant": "select name, setting from pg_settings where name like 'pgwarden%'",
    "current-setting-tenant": "select current_setting('pgwarden.tenant', true), "
    "current_setting('pgwarden.tenant_token', true)",
    "current-setting-upper": "select current_setting('PGWARDEN.TENANT_TOKEN', true)",
}

REFUSED = {
    "unlisted-table": "select * from secrets",
    "unlisted-table-unicode": "select * from U&\"secr!0065ts\" UESCAPE '!'",
    "unlisted-in-backslash-string": "select 'a\\', (select secret from secrets) --'",
    "query-to-xml": "select query_to_xml('select * from customers', true, true, '')",
    "query-to-xml-nested": "select xpath('/a', query_to_xml('select * from customers', true, true, ''))",
    "table-to-xml": "select table_to_xml('customers', true, false, '')",
    "cursor-to-xml": "select cursor_to_xml('c', 10, true, false, '')",
    "database-to-xml": "select database_to_xml(true, false, '')",
    "ts-stat": "select * from ts_stat('select to_tsvector(name) from public.customers')",
    "read-file": "select pg_read_file('/etc/passwd')",
    "read-file-qualified": "select pg_catalog.pg_read_file('/etc/passwd')",
    "read-file-quoted": "select \"pg_read_file\"('/etc/passwd')",
    "read-binary-file": "select pg_read_binary_file('/etc/passwd')",
    "ls-dir": "select pg_ls_dir('.')",
    "lo-import": "select lo_import('/etc/passwd')",
    "lo-get": "select lo_get(1)",
    "lo-export": "select lo_export(1, '/tmp/pgw_x')",
    "dblink": "select * from dblink('dbname=postgres', 'select 1') as t(a int)",
    "stat-activity-function": "select * from pg_stat_get_activity(null)",
    "terminate-backend": "select pg_terminate_backend(1)",
    "set-config-tenant": "select set_config('pgwarden.tenant', 'globex', false)",
    "set-config-search-path": "select set_config('search_path', 'pgw_evil', false)",
    "set-tenant": "set pgwarden.tenant = 'globex'",
    "set-tenant-quoted": 'set "pgwarden"."tenant" = \'globex\'',
    "set-tenant-upper": "SET PGWARDEN.TENANT = 'globex'",
    "reset-tenant": "reset pgwarden.tenant",
    "forged-token": "set pgwarden.tenant_token = 'globex.9999999999.AAAA'",
    "pg-stats": "select * from pg_stats where tablename = 'customers'",
    "pg-statistic": "select * from pg_statistic",
    "pg-stats-ext": "select * from pg_stats_ext",
    "pg-stat-activity": "select query from pg_stat_activity",
    "pg-stat-statements": "select * from pg_stat_statements",
    "pg-authid": "select rolpassword from pg_authid",
    "pg-shadow": "select * from pg_shadow",
    "pg-largeobject": "select * from pg_largeobject",
    "set-role": "set role postgres",
    "set-role-none": "set role none",
    "reset-role": "reset role",
    "session-authorization": "set session authorization postgres",
    "reset-all": "reset all",
    "set-local-search-path": "set local search_path = pgw_evil",
    "truncate": "truncate orders",
    "ddl": "create table pgw_attack (x int)",
    "create-view": "create view pgw_v as select * from customers",
    "create-table-as": "create table pgw_t as select * from customers",
    "select-into": "select * into pgw_t2 from customers",
    "temp-table": "create temp table customers (id int)",
    "do": "do $$ begin perform 1; end $$",
    "grant": "grant select on secrets to public",
    "alter-system": "alter system set work_mem = '1MB'",
    "vacuum": "vacuum customers",
    "lock": "lock table customers",
    "load": "load 'auto_explain'",
    "pg-temp": "select * from pg_temp.customers",
    "tablesample": "select * from customers tablesample bernoulli (100)",
    "merge": "merge into orders o using (select 12 as id) s on o.id = s.id when matched then delete",
    "merge-insert": "merge into orders o using (select 66 as id) s on o.id = s.id "
    "when not matched then insert values (66, 'globex', 1, 1)",
    "multi-statement": "select 1; select * from secrets",
    "security-definer": "select * from pgw_all_customers()",
    "view": "select * from pgw_v_customers",
    "partition": "select * from pgw_part_globex",
    "evil-schema": "select * from pgw_evil.customers",
    "three-part-name": f"select * from {DB}.public.customers",
    "whole-row-returning": "update customers set name = name where id = 1 returning customers",
    "masked-subquery-in-set": "update customers set name = (select ssn from public.customers where id = 1) "
    "where id = 2",
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
            analyze;
        """)
    yield


def _assert_clean(rows, sql: str = "") -> None:
    """No secret in `rows` (a value the attacker wrote in the statement itself is no secret)."""
    text = repr(rows)
    leaked = [value for value in LEAKS if value in text and value not in sql]
    assert not leaked, f"leaked {leaked}: {text[:300]}"


def _run_clean(conn, sql: str, params=None, **kw) -> list:
    """Rows of `sql`, refused or failed without a secret in the error; [] when it did not run."""
    try:
        cur = conn.execute(sql, params, **kw)
        rows = cur.fetchall() if cur.description else []
    except psycopg.errors.InsufficientPrivilege as exc:
        assert exc.diag.message_hint, "a refusal says what to change"
        rows = []
    except psycopg.Error as exc:  # an error must not carry a secret either
        _assert_clean(str(exc) + str(exc.diag.message_detail) + str(exc.diag.context), sql)
        rows = []
    _assert_clean(rows, sql)
    return rows


@pytest.mark.parametrize("name", sorted(READ_ATTACKS))
def test_read_attacks_leak_nothing(guarded, name):
    with connect(guarded, "acme_app") as conn:
        _run_clean(conn, READ_ATTACKS[name])
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_dangerous_statements_are_refused_and_the_connection_stays_usable(guarded, name):
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(REFUSED[name])
        assert info.value.diag.message_hint, "a refusal says what to change"
        assert conn.execute("select count(*) from customers").fetchone() == (2,)
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)


def test_masked_values_cannot_be_inferred(guarded):
    """Filters, sorts and functions over ssn see '****' only: their answers are those of '****'."""
    with connect(guarded, "acme_app") as conn:
        one = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        assert one("select count(*) from customers where ssn like '1%'") == [(0,)]
        assert one("select count(*) from customers where ssn = '111-11-1111'") == [(0,)]
        assert one("select count(*) from customers where ssn = '****'") == [(2,)]
        assert one("select distinct length(ssn), md5(ssn), ssn::bytea from customers") == [
            (4, hashlib.md5(b"****").hexdigest(), b"****")
        ]
        assert one("select count(*) from customers a join customers b on a.ssn = b.ssn") == [(4,)]
        assert one("select id from customers where substr(ssn, 1, 1) = '1'") == []
        # writes filtered on ssn must not reveal it by the rows they touch
        assert conn.execute("update customers set name = name where ssn like '1%'").rowcount == 0
        assert conn.execute("delete from customers where ssn = '111-11-1111' and id = 99").rowcount == 0
        assert one("update customers set name = name where id = 1 returning ssn, ssn::bytea, length(ssn)") == [
            ("****", b"****", 4)
        ]


EXFILTRATION = {
    "set-from-masked": "update customers set name = ssn where id = 1",
    "set-from-masked-alias": "update customers c set name = c.ssn || '' where id = 1",
    "insert-select-masked": "insert into customers (id, name, ssn) select 90, ssn, ssn from customers where id = 1",
    "upsert-existing-masked": "insert into customers (id, name) values (1, 'x') "
    "on conflict (id) do update set name = customers.ssn",
    "upsert-where-masked": "insert into customers (id, name) values (1, 'x') on conflict (id) "
    "do update set name = 'hit' where customers.ssn like '1%'",
    "update-phone-from-masked": "update customers set phone = ssn where id = 1",
}


@pytest.mark.parametrize("name", sorted(EXFILTRATION))
def test_masked_values_cannot_be_copied_into_readable_columns(guarded, name):
    """A write that copies ssn into a column acme may read stores the masked value, never the real one."""
    reset_data()
    with connect(guarded, "acme_app") as conn:
        _run_clean(conn, EXFILTRATION[name])
        _assert_clean(conn.execute("select name, email, phone from customers").fetchall())
    with psycopg.connect(DIRECT) as direct:
        names = direct.execute("select name, phone from customers where tenant_id = 'acme'").fetchall()
    assert not any(v and v.startswith(("111", "222")) for row in names for v in row), names
    assert ("hit", "555-0101") not in names, "the ssn predicate chose the row"
    reset_data()


def _table_state():
    with psycopg.connect(DIRECT) as conn:
        return (
            conn.execute("select * from customers order by id").fetchall(),
            conn.execute("select * from orders order by id").fetchall(),
        )


def _globex_state():
    with psycopg.connect(DIRECT) as conn:
        return (
            conn.execute("select * from customers where tenant_id <> 'acme' order by id").fetchall(),
            conn.execute("select * from orders where tenant_id <> 'acme' order by id").fetchall(),
        )


WRITE_ATTACKS = {
    "update-or-true": "update orders set total = 0 where id = 12 or true",
    "update-from": "update orders o set total = 0 from customers c where c.id = o.customer_id",
    "update-from-globex": "update customers c set name = o.tenant_id from orders o where o.id = 12",
    "delete-using": "delete from orders o using customers c where c.id = o.customer_id and o.id = 12",
    "delete-all": "delete from orders",
    "upsert-other-tenants-key": "insert into customers (id, name) values (3, 'pwned') "
    "on conflict (id) do update set name = 'pwned'",
    "upsert-other-tenants-order": "insert into orders (id, customer_id, total) values (12, 3, 1) "
    "on conflict (id) do update set total = 0 returning *",
    "upsert-sets-tenant": "insert into orders (id, customer_id, total) values (10, 1, 1) "
    "on conflict (id) do update set tenant_id = 'globex'",
    "data-modifying-cte": "with d as (delete from orders where id = 12 returning *) select * from d",
    "data-modifying-cte-update": "with u as (update orders set total = 0 returning *) select * from u",
    "explain-analyze-delete": "explain analyze delete from orders where tenant_id = 'globex'",
    "explain-analyze-update": "explain analyze update orders set total = 0",
    "explain-analyze-cte": "explain analyze with x as (delete from orders returning *) select 1",
    "update-returning-mask": "update customers set name = name returning ssn",
    "update-returning-globex": "update orders set total = 1 where id = 12 returning *",
    "upsert-other-tenants-email": "insert into customers (id, name, email) values (77, 'pwned', 'gus@globex.io') "
    "on conflict (email) do update set name = 'pwned'",
    "upsert-on-constraint": "insert into customers (id, name) values (3, 'pwned') "
    "on conflict on constraint customers_pkey do update set name = 'pwned'",
    "delete-inheritance-star": "delete from orders * where id = 12",
    "update-inheritance-star": "update orders * set total = 0 where id = 12",
    "update-from-cte": "with c as (select * from public.customers) update orders set total = 0 "
    "from c where c.id = orders.customer_id and c.id = 3",
    "cte-shadows-delete-target": "with orders as (select 1) delete from orders",
    "cte-shadows-update-target": "with orders as (select 1) update orders set total = 0",
    "cte-shadows-upsert-target": "with orders as (select 1) insert into orders (id, customer_id, total) "
    "values (12, 3, 1) on conflict (id) do update set total = 0",
    "cte-later-in-subquery": "update orders set total = 0 where exists "
    "(with orders as (select 12 as id) select 1 from orders)",
    "insert-reads-globex": "insert into orders (id, customer_id, total) "
    "values (78, 3, (select total from orders where id = 12)) returning total",
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
        except psycopg.errors.InsufficientPrivilege as exc:
            assert exc.diag.message_hint
        except psycopg.errors.UniqueViolation as exc:
            _assert_clean(str(exc) + str(exc.diag.message_detail))
    assert _globex_state() == before
    reset_data()


TENANT_WRITES = {
    "insert-literal": "insert into orders (id, tenant_id, customer_id, total) values (50, 'globex', 1, 1)",
    "insert-no-columns": "insert into orders values (51, 'globex', 1, 1)",
    "insert-reordered": "insert into orders (tenant_id, id) values ('globex', 52)",
    "insert-second-row": "insert into orders (id, tenant_id, customer_id, total) "
    "values (53, 'acme', 1, 1), (54, 'globex', 1, 1)",
    "insert-select": "insert into orders select 55, 'globex', 1, 1",
    "insert-unicode": "insert into orders (id, tenant_id, customer_id, total) values (56, U&'\\0067lobex', 1, 1)",
    "insert-dollar": "insert into orders (id, tenant_id, customer_id, total) values (57, $$globex$$, 1, 1)",
    "insert-concat": "insert into orders (id, tenant_id, customer_id, total) values (58, 'glo' || 'bex', 1, 1)",
    "insert-escape": "insert into orders (id, tenant_id, customer_id, total) values (59, E'glo\\x62ex', 1, 1)",
    "insert-continued": "insert into orders (id, tenant_id, customer_id, total) values (60, 'glo'\n'bex', 1, 1)",
    "insert-subquery": "insert into orders (id, tenant_id, customer_id, total) values (61, (select 'globex'), 1, 1)",
    "insert-cast": "insert into orders (id, tenant_id, customer_id, total) values (62, 'globex'::text, 1, 1)",
    "insert-function": "insert into orders (id, tenant_id, customer_id, total) values (63, lower('GLOBEX'), 1, 1)",
    "insert-cte": "with x as (insert into orders (id, tenant_id, customer_id, total) "
    "values (64, 'globex', 1, 1) returning *) select * from x",
    "explain-analyze-insert": "explain analyze insert into orders (id, tenant_id, customer_id, total) "
    "values (65, 'globex', 1, 1)",
    "update-literal": "update orders set tenant_id = 'globex' where id = 10",
    "update-quoted-column": "update orders set \"tenant_id\" = 'globex' where id = 10",
    "update-upper-column": "update orders set TENANT_ID = 'globex' where id = 10",
    "update-concat": "update orders set tenant_id = 'glo' || 'bex' where id = 10",
    "update-unicode": "update orders set tenant_id = U&'\\0067lobex' where id = 10",
    "update-multi-column": "update orders set (tenant_id, total) = ('globex', 1) where id = 10",
    "update-multi-subquery": "update orders set (tenant_id, total) = (select 'globex', 1) where id = 10",
    "cte-shadows-insert-target": "with orders as (select 1 as x) insert into orders "
    "(id, tenant_id, customer_id, total) values (66, 'globex', 3, 1)",
    "insert-select-with-cte": "insert into orders (id, tenant_id, customer_id, total) "
    "with orders as (select 1) select 67, 'globex', 3, 1",
    "update-cte": "with x as (update orders set tenant_id = 'globex' where id = 11 returning *) select * from x",
    "multi-statement-write-then-refused": "delete from orders where id = 10; select pg_read_file('x')",
    "multi-statement-write-then-secrets": "select 1; delete from orders where true; select * from secrets",
}


@pytest.mark.parametrize("name", sorted(TENANT_WRITES))
def test_writes_naming_another_tenant_are_refused_and_nothing_runs(guarded, name):
    reset_data()
    before = _table_state()
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(TENANT_WRITES[name])
        assert info.value.diag.message_hint
        assert conn.execute("select count(*) from orders").fetchone() == (2,)
    assert _table_state() == before


def test_a_literal_shape_allowed_for_acme_does_not_admit_globex(guarded):
    """The rewrite cache by statement shape must not reuse the acme literal's decision for globex."""
    reset_data()
    insert = "insert into orders (id, tenant_id, customer_id, total) values ({}, '{}', 1, 1)"
    update = "update orders set tenant_id = '{}' where id = {}"
    with connect(guarded, "acme_app") as conn:
        for _ in range(2):
            conn.execute("delete from orders where id = 70")
            conn.execute(insert.format(70, "acme"))
            conn.execute(update.format("acme", 70))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(insert.format(71, "globex"))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(update.format("globex", 70))
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select id, tenant_id from orders where id in (70, 71)").fetchall() == [(70, "acme")]
    reset_data()


PARAM_WRITES = {
    "plain": ("insert into orders (id, tenant_id, customer_id, total) values (%s, %s, 1, 1)", (80, "globex")),
    "cast": ("insert into orders (id, tenant_id, customer_id, total) values (%s, %s::text, 1, 1)", (81, "globex")),
    "lower": ("insert into orders (id, tenant_id, customer_id, total) values (%s, lower(%s), 1, 1)", (82, "GLOBEX")),
    "concat": ("insert into orders (id, tenant_id, customer_id, total) values (%s, %s || '', 1, 1)", (83, "globex")),
    "coalesce": (
        "insert into orders (id, tenant_id, customer_id, total) values (%s, coalesce(%s, 'acme'), 1, 1)",
        (84, "globex"),
    ),
    "case": (
        "insert into orders (id, tenant_id, customer_id, total) values (%s, case when true then %s end, 1, 1)",
        (85, "globex"),
    ),
    "insert-select": ("insert into orders (id, tenant_id, customer_id, total) select %s, %s, 1, 1", (86, "globex")),
    "update": ("update orders set tenant_id = %s where id = 10", ("globex",)),
    "update-upper": ("update orders set tenant_id = upper(%s) where id = 10", ("globex",)),
}


@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "prepared"])
@pytest.mark.parametrize("name", sorted(PARAM_WRITES))
def test_parameters_naming_another_tenant_are_refused(guarded, name, prepare):
    """Extended protocol, with psycopg's server-side prepared statements too: acme first, then globex."""
    reset_data()
    sql, params = PARAM_WRITES[name]
    acme = tuple("acme" if p in ("globex", "GLOBEX") else p for p in params)
    with connect(guarded, "acme_app") as conn:
        if name in ("plain", "insert-select", "update") and prepare:  # a cast is refused whatever its value
            conn.execute(sql, acme, prepare=True)  # the same statement, allowed, then re-bound
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, params, prepare=prepare)
        assert conn.execute("select count(*) from orders where tenant_id = %s", ("globex",)).fetchone() == (0,)
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select count(*) from orders where tenant_id = 'globex'").fetchone() == (1,)
        assert direct.execute("select tenant_id from orders where id = 10").fetchone() == ("acme",)
    reset_data()


def test_asyncpg_prepared_statements_rebound_to_another_tenant(guarded):
    reset_data()

    async def attack():
        conn = await asyncpg.connect(host=guarded.host, port=guarded.port, user="acme_app", database=DB, ssl=False)
        try:
            insert = await conn.prepare("insert into orders (id, tenant_id, customer_id, total) values ($1, $2, 1, 1)")
            await insert.fetch(90, "acme")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await insert.fetch(91, "globex")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("update orders set tenant_id = $1 where id = 10", "globex")
            read = await conn.prepare("select name, ssn from customers where tenant_id = $1 or id = $2")
            assert await read.fetch("globex", 3) == []
            assert [tuple(r) for r in await read.fetch("acme", 0)] == [("Ann", "****"), ("Bob", "****")]
        finally:
            await conn.close()

    asyncio.run(attack())
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select id, tenant_id from orders where id >= 90 order by id").fetchall() == [
            (90, "acme")
        ]
    reset_data()


def test_asyncpg_executemany_with_a_refused_row_runs_nothing(guarded):
    reset_data()

    async def attack():
        conn = await asyncpg.connect(host=guarded.host, port=guarded.port, user="acme_app", database=DB, ssl=False)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.executemany(
                    "insert into orders (id, tenant_id, customer_id, total) values ($1, $2, 1, 1)",
                    [(92, "acme"), (93, "globex")],
                )
        finally:
            await conn.close()

    asyncio.run(attack())
    with psycopg.connect(DIRECT) as direct:
        rows = direct.execute("select id, tenant_id from orders where id >= 90 order by id").fetchall()
    reset_data()
    assert rows == [], "a refused batch must not half-run"


def test_unique_violation_detail_does_not_show_the_other_tenants_row(guarded):
    with connect(guarded, "acme_app") as conn:
        for sql in [
            "insert into customers (id, name, email) values (70, 'x', 'gus@globex.io')",
            "insert into customers (id, name) values (3, 'x')",
        ]:
            with pytest.raises(psycopg.errors.UniqueViolation) as info:
                conn.execute(sql)
            _assert_clean(str(info.value) + str(info.value.diag.message_detail), sql)


def test_cursors_and_copy_show_only_the_tenant_masked(guarded):
    with connect(guarded, "acme_app") as conn:
        with conn.transaction():
            conn.execute("declare c cursor for select * from customers where true or tenant_id = 'globex'")
            fetched = conn.execute("fetch all from c").fetchall()
            conn.execute("move backward all in c")
            assert conn.execute("fetch all from c").fetchall() == fetched
        assert [(r[0], r[4]) for r in fetched] == [(1, "****"), (2, "****")]
        conn.execute("declare h cursor with hold for select name, ssn from customers")
        assert conn.execute("fetch all from h").fetchall() == [("Ann", "****"), ("Bob", "****")]
        conn.execute("close h")
        with conn.cursor().copy("copy customers to stdout") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        assert data.count(b"\n") == 2 and b"Ann" in data and b"****" in data
        _assert_clean(data.decode())
        with conn.cursor().copy("copy customers (ssn, id) to stdout") as copy:
            assert b"".join(bytes(chunk) for chunk in copy) == b"****\t1\n****\t2\n"
        with conn.cursor().copy(
            "copy (select name, ssn from customers where true or tenant_id = 'globex') to stdout (format csv)"
        ) as copy:
            assert b"".join(bytes(chunk) for chunk in copy) == b"Ann,****\nBob,****\n"


@pytest.mark.parametrize(
    "sql",
    [
        "copy customers from stdin",
        "copy orders (id, tenant_id) from stdin",
        "copy customers to '/tmp/pgw_leak.csv'",
        "copy (select 1) to program 'id'",
    ],
)
def test_copy_from_and_server_side_copy_are_refused(guarded, sql):
    reset_data()
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.cursor().copy(sql) as copy:
            if "from" in sql:
                copy.write("99\tglobex\n")
        assert conn.execute("select 1").fetchone() == (1,)
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select count(*) from orders").fetchone() == (3,)


def test_search_path_cannot_redirect_a_name(guarded):
    with connect(guarded, "acme_app") as conn:
        conn.execute("set search_path = pgw_evil, public")
        _run_clean(conn, "select * from customers")
        conn.execute("set search_path = public")
        assert conn.execute("select count(*) from customers").fetchone() == (2,)


def test_sql_prepare_is_rewritten_or_refused(guarded):
    with connect(guarded, "acme_app") as conn:
        try:
            conn.execute("prepare p1 as select * from customers where id = $1 or true")
            rows = conn.execute("execute p1(3)").fetchall()
            assert [r[0] for r in rows] == [1, 2]
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported):
            rows = []
        _assert_clean(rows)
        for sql in [
            "prepare p2 as insert into orders (id, tenant_id, customer_id, total) values ($1, $2, 1, 1)",
            "prepare p3 as update orders set tenant_id = $1 where id = 10",
        ]:
            try:
                conn.execute(sql)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("execute " + sql.split()[1] + ("(95, 'globex')" if "p2" in sql else "('globex')"))
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported):
                pass
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select count(*) from orders where tenant_id = 'globex'").fetchone() == (1,)


@pytest.mark.parametrize(
    "user, options",
    [
        ("acme_app", "-c pgwarden.tenant=globex"),
        ("acme_app", "--pgwarden.tenant=globex"),
        ("acme_app", "-cpgwarden.tenant=globex"),
        ("alice", "-c pgwarden.tenant=globex"),
        ("acme_app", "-c role=postgres"),
        ("acme_app", "-c session_authorization=postgres"),
        ("acme_app", "-c search_path=pgw_evil"),
    ],
)
def test_startup_options_cannot_change_identity(guarded, user, options):
    """A startup parameter is judged like a SET: refused at login, or without effect on the tenant."""
    try:
        conn = psycopg.connect(guarded.dsn(user=user, dbname=DB), options=options, autocommit=True)
    except psycopg.OperationalError as exc:
        assert "refused" in str(exc)
        return
    with conn:
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme" if user == "acme_app" else None,)
        _run_clean(conn, "select * from customers")
        _run_clean(conn, "select * from secrets")


def _token(tenant: str, expiry: int | None = None, key: str = TOKEN_KEY) -> str:
    body = f"{tenant}.{expiry or int(time.time()) + 600}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).rstrip(b"=")
    return f"{body.decode()}.{sig.decode()}"


def test_tampered_tenant_tokens_leave_the_tenant_unchanged(guarded):
    with connect(guarded, "token_user") as conn:
        conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
        bad = [
            _token("globex", key="not-the-key"),
            _token("globex", expiry=int(time.time()) - 5),
            _token("globex")[:-2],
            _token("acme").replace("acme", "globex", 1),
            "globex",
            "",
        ]
        for token in bad:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"set pgwarden.tenant_token = '{token}'")
            assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        for sql in ["set pgwarden.tenant = 'globex'", "select set_config('pgwarden.tenant_token', %s, false)"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql, (_token("globex"),) if "%s" in sql else None)
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)


def test_a_user_mapped_to_a_tenant_cannot_switch_with_a_token(guarded):
    with connect(guarded, "acme_app") as conn:
        try:
            conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        except psycopg.errors.InsufficientPrivilege:
            pass
        _run_clean(conn, "select name from customers")
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)


def test_trusted_user_identity_statements(guarded):
    """saas_backend: RESET ALL and set_config cannot move it to another tenant; DISCARD ALL drops its tenant."""
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        for sql in [
            "reset all",
            "select set_config('pgwarden.tenant', 'globex', false)",
            "set role postgres",
            "set session authorization postgres",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        conn.execute("discard all")
        try:
            rows = conn.execute("select name from customers").fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = []
        _assert_clean(rows)


def test_another_clients_tenant_setting_is_not_readable(guarded):
    """Pooled backends are shared: a trusted client's tenant or token never shows in acme's session."""
    with connect(guarded, "saas_backend") as saas, connect(guarded, "token_user") as tok:
        saas.execute("set pgwarden.tenant = 'globex'")
        tok.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        assert saas.execute("select name from customers").fetchall() == [("Gus",)]
        assert tok.execute("select name from customers").fetchall() == [("Gus",)]
        for _ in range(3):
            with connect(guarded, "acme_app") as conn:
                _run_clean(conn, READ_ATTACKS["current-setting-tenant"])
                _run_clean(conn, READ_ATTACKS["current-setting-upper"])
                _run_clean(conn, READ_ATTACKS["pg-settings-tenant"])


def test_unicode_identifier_with_uescape_is_filtered_not_refused(guarded):
    with connect(guarded, "acme_app") as conn:
        rows = conn.execute("select id from U&\"cust!006fmers\" UESCAPE '!' order by id").fetchall()
        assert rows == [(1,), (2,)]


# --- a second database: globex's rows stored first; a listed view, partitions, functions ------------------


@pytest.fixture(scope="module", params=["transaction", "session"])
def extended(request, tmp_path_factory):
    bypass_shop.create()
    proxy = policy_proxy(
        tmp_path_factory.mktemp(f"bypass-{request.param}"), request.param, policy=bypass_shop.BYPASS_POLICY
    )
    yield proxy
    proxy.stop()
    bypass_shop.drop()


def _connect_extended(proxy, user="acme_app"):
    return psycopg.connect(proxy.dsn(user=user, dbname=bypass_shop.DB), autocommit=True)


def test_errors_in_predicates_never_meet_another_tenants_row(extended):
    """Globex's rows come first on disk: a predicate run before the tenant filter would fail on Gus."""
    with _connect_extended(extended) as conn:
        for sql in [
            "select * from customers where name::int > 0",
            "select * from customers where name::bool",
            "select * from customers where email::int > 0",
            "select * from customers c join orders o on o.customer_id = c.id where c.name::int > 0",
            "select * from customers where 1 / (case when name = 'Gus' then 0 else 1 end) = 1",
            "select * from orders where total::int / (total::int - 999) = 0",
        ]:
            _run_clean(conn, sql)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute("select * from customers where name::int > 0")
        assert "Ann" in str(info.value) or "Bob" in str(info.value)


def test_check_violation_detail_does_not_show_the_masked_row(extended):
    with _connect_extended(extended) as conn:
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            conn.execute("update customers set name = 'x' where id = 1")
        _assert_clean(str(info.value) + str(info.value.diag.message_detail))


def test_a_listed_view_is_filtered_and_masked_and_an_unlisted_one_refused(extended):
    with _connect_extended(extended) as conn:
        rows = conn.execute(
            "select id, name, ssn from v_customers where true or tenant_id = 'globex' order by id"
        ).fetchall()
        assert rows == [(1, "Ann", "****"), (2, "Bob", "****")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from v_unlisted")
        _run_clean(conn, "select v::text from v_customers v")


def test_partitions_of_a_listed_table_cannot_be_read_directly(extended):
    with _connect_extended(extended) as conn:
        assert conn.execute("select id, body from events").fetchall() == [(2, "acme-event")]
        assert conn.execute("select id, body from only events").fetchall() == []
        for sql in ["select * from events_globex", "select * from events_acme", "select * from public.events_globex"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert info.value.diag.message_hint
        _run_clean(conn, "select tableoid::regclass, * from events")


def test_security_definer_functions_are_refused_unless_allowed(extended):
    with _connect_extended(extended) as conn:
        for sql in [
            "select * from all_customers()",
            "select all_customers()",
            "select (all_customers()).ssn",
            "select * from public.all_customers()",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert "functions.allow" in info.value.diag.message_hint or "allow" in str(info.value)
        # a listed function that only computes is not over-refused
        assert conn.execute("select order_total(total) from orders order by id").fetchall() == [(200,), (101,)]


def _refused(conn, sql: str, *words: str) -> None:
    """`sql` is refused (42501) with a hint, and the message names each of `words`."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql)
    assert info.value.diag.message_hint, sql
    assert all(w in info.value.diag.message_primary for w in words), (sql, info.value.diag.message_primary)


def test_a_user_function_named_like_a_built_in_is_refused(extended):
    with _connect_extended(extended) as conn:
        for sql in [
            "select upper('x'::varchar)",
            "select upper(name::varchar) from customers",
            "select upper(cast('x' as character varying))",
            "select upper('x')",
        ]:
            _run_clean(conn, sql)
            _refused(conn, sql, "public.upper")
        # the built-in gives 11 for each acme email; public.length(varchar) counts every tenant's rows (3)
        assert _run_clean(conn, "select length(email::varchar) from customers") in ([], [(11,), (11,)])
        _refused(conn, "select length(email::varchar) from customers", "public.length")
        # field notation calls the function too: (x).upper is upper(x)
        _refused(conn, "select (name::varchar).upper from customers", "upper")
        _refused(conn, "select ('PG_VERSION'::text).pg_read_file", "pg_read_file")
        # the built-in, named in pg_catalog, and a listed function stay usable
        assert conn.execute("select pg_catalog.upper(name::varchar) from customers order by id").fetchall() == [
            ("ANN",),
            ("BOB",),
        ]
        assert conn.execute("select lower('X'), c.name from customers c order by c.id").fetchall() == [
            ("x", "Ann"),
            ("x", "Bob"),
        ]
        assert conn.execute("select order_total(total) from orders order by id").fetchall() == [(200,), (101,)]


def test_a_function_a_bypass_role_creates_through_pgwarden_is_known_at_once(extended):
    """DDL a bypass role runs through pgwarden makes it read the schema again when it commits."""
    with _connect_extended(extended, user="postgres") as admin, _connect_extended(extended) as conn:
        assert conn.execute("select lower('X')").fetchone() == ("x",)
        prepared = "select lower(name::varchar) from customers where id = %s"
        for _ in range(2):  # prepared, and its Parse cached in this session
            assert conn.execute(prepared, (1,), prepare=True).fetchone() == ("ann",)
        admin.execute(
            "create function public.lower(varchar) returns text language sql security definer "
            "as $$ select string_agg(name || ':' || ssn, ',') from customers $$"
        )
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    conn.execute("select lower('X')")
                except psycopg.errors.InsufficientPrivilege as exc:
                    assert "public.lower" in exc.diag.message_primary
                    break
                assert time.monotonic() < deadline, "the new function was not learnt within 5 s"
                time.sleep(0.05)
            # what this session prepared before is judged again, not run from its cache
            _refused(conn, "select lower(name::varchar) from customers where id = 1", "public.lower")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(prepared, (1,), prepare=True)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(prepared, (1,), prepare=False)
        finally:
            admin.execute("drop function public.lower(varchar)")


def test_a_user_defined_operator_is_refused(extended):
    with _connect_extended(extended) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select 1 operator(public.===) 2")
        _run_clean(conn, "select 1 === 2")
        _run_clean(conn, "select id from customers where (id === 1) is not null")
        _refused(conn, "select 1 === 2", "public.===", "public.leak_op")
        _refused(conn, "select id from customers where (id === 1) is not null", "===")
        # built-in operators, spelled plainly or in pg_catalog, are untouched
        assert conn.execute(
            "select id from customers where id = 1 and name operator(pg_catalog.=) 'Ann' and id between 0 and 5"
        ).fetchall() == [(1,)]


def test_secret_server_settings_are_refused(extended):
    with _connect_extended(extended) as conn:
        for sql in [
            "show primary_conninfo",
            "select current_setting('primary_conninfo')",
            "select setting from pg_settings where name = 'primary_conninfo'",
            "select setting from pg_show_all_settings() where name = 'ssl_passphrase_command'",
            "show all",
            "SHOW Archive_Command",
            "select current_setting(name) from customers",
            "select setting from pg_settings",
            "select setting from pg_settings where name = 'TimeZone' or name = 'primary_conninfo'",
            "select * from pg_file_settings",
            "select ('primary_conninfo'::text).current_setting",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert info.value.diag.message_hint, sql
        # what ORMs and drivers ask for stays answered
        assert conn.execute("show transaction_isolation").fetchone() == ("read committed",)
        assert conn.execute("select current_setting('server_version_num')").fetchone()[0].isdigit()
        assert (
            conn.execute(
                "select cast(setting as integer) from pg_settings where name = 'max_prepared_transactions'"
            ).fetchone()[0]
            >= 0
        )


def test_catalogs_with_other_sessions_data_or_secrets_are_refused(extended):
    with psycopg.connect(bypass_shop.DIRECT.format(bypass_shop.DB), autocommit=True) as direct:
        direct.execute("create statistics if not exists cust_mcv (mcv) on tenant_id, name from customers")
        direct.execute("analyze customers")
    with _connect_extended(extended) as conn:
        for sql in [
            "select stxdmcv::text from pg_statistic_ext_data",
            "select m.* from pg_statistic_ext_data d, pg_mcv_list_items(d.stxdmcv) m",
            "select * from pg_stats_ext_exprs",
            "select umoptions from pg_user_mapping",
            "select subconninfo from pg_subscription",
            "select srvoptions from pg_foreign_server",
            "select setconfig from pg_db_role_setting",
            "select * from pg_stat_ssl",
            "select * from pg_policies",
            "select * from pg_hba_file_rules()",
            "select * from pg_show_all_file_settings()",
            "select pg_stat_file('postgresql.conf')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert info.value.diag.message_hint
        # what stays readable for ORMs and tools carries no tenant data
        _run_clean(conn, "select passwd from pg_user")
        _run_clean(conn, "select * from pg_views where viewname = 'v_customers'")


def test_listen_never_delivers_another_tenants_rows(extended):
    """A trigger's pg_notify carries globex's new order on the raw channel: acme's LISTEN of that
    name is scoped to acme (proxy/session/notify.py), so nothing reaches it, in both modes."""
    with _connect_extended(extended) as conn:
        conn.execute("listen orders_changed")
        with _connect_extended(extended, "globex_app") as globex:
            globex.execute("insert into orders (id, customer_id, total) values (500, 3, 777.77)")
            globex.execute("delete from orders where id = 500")
        assert conn.execute("select 1").fetchone() == (1,)
        assert [n.payload for n in conn.notifies(timeout=1, stop_after=1)] == []


def test_two_roles_of_one_tenant_never_share_a_rewrite(extended):
    """acme_app and acme_analyst send the same texts, alternately, on shared backends: the analyst's masks hold."""
    sqls = [
        "select id, email, phone from customers order by id",
        "select email from customers where id = 1",
        "select id, email, phone from customers where id = %s",
    ]
    with _connect_extended(extended) as app, _connect_extended(extended, "acme_analyst") as analyst:
        for _ in range(3):
            for sql in sqls:
                params = (1,) if "%s" in sql else None
                for prepare in (False, True):
                    seen = app.execute(sql, params, prepare=prepare).fetchall()
                    assert "ann@acme.io" in repr(seen)
                    masked = analyst.execute(sql, params, prepare=prepare).fetchall()
                    assert "ann@acme.io" not in repr(masked) and "555-0101" not in repr(masked), masked
                    assert "****@acme.io" in repr(masked)


def test_the_analysts_masks_cannot_be_inferred(extended):
    with _connect_extended(extended, "acme_analyst") as conn:
        one = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        assert one("select email, phone from customers where id = 1") == [("****@acme.io", "****0101")]
        assert one("select count(*) from customers where email like 'ann%' or phone = '555-0101'") == [(0,)]
        assert one("select count(*) from customers where email = '****@acme.io'") == [(2,)]
        assert one("select distinct md5(email) from customers") == [(hashlib.md5(b"****@acme.io").hexdigest(),)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update customers set name = email where id = 1")


def test_a_same_named_table_on_the_search_path_is_never_read(extended):
    with _connect_extended(extended) as conn:
        conn.execute("set search_path = evil, public")
        _run_clean(conn, "select * from customers")
        conn.execute("reset search_path")
        assert conn.execute("select count(*) from customers").fetchone() == (2,)
    with psycopg.connect(
        extended.dsn(user="acme_app", dbname=bypass_shop.DB), options="-c search_path=evil,public", autocommit=True
    ) as conn:
        _run_clean(conn, "select * from customers")


def test_planner_statistics_are_refused(extended):
    """The shop was ANALYZEd: pg_stats would show globex's values as most-common values."""
    with _connect_extended(extended) as conn:
        for sql in [
            "select most_common_vals::text from pg_stats where tablename = 'customers'",
            "select stavalues1::text from pg_statistic",
            "select * from pg_catalog.pg_stats",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_a_prepared_statement_follows_the_tenant_switch(guarded):
    """saas_backend prepares under globex, switches to acme, runs it again: acme's rows, not globex's."""
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'globex'")
        assert conn.execute("select name from customers", prepare=True).fetchall() == [("Gus",)]
        conn.execute("set pgwarden.tenant = 'acme'")
        assert conn.execute("select name from customers order by id", prepare=True).fetchall() == [("Ann",), ("Bob",)]
        assert conn.execute("select name from customers", prepare=True).fetchall() != [("Gus",)]


def test_a_rolled_back_tenant_switch_is_undone(guarded):
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        conn.execute("begin")
        conn.execute("set pgwarden.tenant = 'globex'")
        conn.execute("rollback")
        assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        with conn.transaction():
            conn.execute("set local pgwarden.tenant = 'globex'")
            assert conn.execute("select name from customers").fetchall() == [("Gus",)]
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)


def test_a_tenant_switch_rolled_back_to_a_savepoint_is_undone(guarded):
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        with conn.transaction():
            conn.execute("savepoint a")
            conn.execute("set pgwarden.tenant = 'globex'")
            conn.execute("rollback to savepoint a")
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)
        assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]


def test_savepoints_keep_or_undo_a_tenant_switch_as_postgresql_does(guarded):
    """RELEASE keeps a SET; ROLLBACK TO uses the newest savepoint of a name and keeps it; SET LOCAL too."""
    tenant = lambda conn: conn.execute("show pgwarden.tenant").fetchone()[0]  # noqa: E731
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        with conn.transaction():
            conn.execute("savepoint a")
            conn.execute("set pgwarden.tenant = 'globex'")
            conn.execute("release savepoint a")
            assert conn.execute("select name from customers").fetchall() == [("Gus",)]
        assert tenant(conn) == "globex"
        conn.execute("set pgwarden.tenant = 'acme'")
        with conn.transaction():
            conn.execute("savepoint a")
            conn.execute("set pgwarden.tenant = 'globex'")
            conn.execute("savepoint a")
            conn.execute("set pgwarden.tenant = 'acme'")
            conn.execute("rollback to savepoint a")
            assert tenant(conn) == "globex"
            conn.execute("set local pgwarden.tenant = 'acme'")
            conn.execute("rollback to a")
            assert tenant(conn) == "globex"
            conn.execute("release a")
            conn.execute("rollback to a")
            assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        assert tenant(conn) == "acme"
        conn.execute("begin; savepoint b")  # one Query: both apply
        conn.execute("set pgwarden.tenant = 'globex'")
        conn.execute("rollback to b; commit")
        assert tenant(conn) == "acme"


def test_a_tenant_switch_rolled_back_in_one_pipeline_is_undone(guarded):
    """BEGIN, SET and ROLLBACK sent together (extended protocol, one Sync) before any answer."""
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        with conn.pipeline():
            conn.execute("begin")
            conn.execute("set pgwarden.tenant = 'globex'")
            conn.execute("rollback")
        assert conn.execute("show pgwarden.tenant").fetchone() == ("acme",)
        assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]


def _tenant_and_rows(conn: psycopg.Connection) -> tuple:
    return (
        conn.execute("show pgwarden.tenant").fetchone()[0],
        conn.execute("select name from customers order by id").fetchall(),
    )


ACME_ROWS, GLOBEX_ROWS = [("Ann",), ("Bob",)], [("Gus",)]


def test_a_set_pipelined_after_a_rollback_outlives_it(guarded):
    """ROLLBACK undoes what its transaction SET when it is sent, not what the pipeline SETs after it."""
    with connect(guarded, "token_user") as conn:
        conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
        globex = _token("globex")
        with conn.pipeline():
            conn.execute("begin")
            conn.execute(f"set pgwarden.tenant_token = '{globex}'")
            conn.execute("rollback")
            conn.execute(f"set pgwarden.tenant_token = '{globex}'")
        assert _tenant_and_rows(conn) == ("globex", GLOBEX_ROWS)


def test_a_commit_is_not_undone_by_a_rollback_pipelined_after_it(guarded):
    """Two transactions in one pipeline, each with its Sync: the first commits, the second rolls back."""
    with connect(guarded, "token_user") as conn:
        conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
        with conn.pipeline() as pipeline:
            conn.execute("begin")
            conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
            conn.execute("commit")
            pipeline.sync()
            conn.execute("begin")
            conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
            conn.execute("rollback")
        assert _tenant_and_rows(conn) == ("globex", GLOBEX_ROWS)
        with conn.pipeline():  # COMMIT AND CHAIN keeps the SET; ROLLBACK AND CHAIN undoes the next
            conn.execute("begin")
            conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
            conn.execute("commit and chain")
            conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
            conn.execute("rollback and chain")
            conn.execute("commit")
        assert _tenant_and_rows(conn) == ("acme", ACME_ROWS)


def test_a_commit_of_a_failed_transaction_undoes_its_sets(guarded):
    """PostgreSQL turns that COMMIT into a ROLLBACK; with a SET pipelined behind it, pgwarden refuses."""
    with connect(guarded, "token_user") as conn:
        conn.execute(f"set pgwarden.tenant_token = '{_token('acme')}'")
        conn.execute("begin")
        conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.execute("commit")
        assert _tenant_and_rows(conn) == ("acme", ACME_ROWS)
        conn.execute("begin")
        conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with conn.pipeline():  # the COMMIT's answer comes after the next SET was sent
            conn.execute("commit")
            conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        # pgwarden learns the COMMIT was a rollback too late to place it: unknown, never acme
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select name from customers")
        conn.execute(f"set pgwarden.tenant_token = '{_token('globex')}'")
        assert _tenant_and_rows(conn) == ("globex", GLOBEX_ROWS)


def test_a_failed_savepoint_command_leaves_the_tenant_unknown_until_set_again(guarded):
    """pgwarden cannot tell what PostgreSQL kept after such a failure: it refuses, never guesses."""
    with connect(guarded, "saas_backend") as conn:
        conn.execute("set pgwarden.tenant = 'acme'")
        conn.execute("begin")
        conn.execute("savepoint a")
        conn.execute("set pgwarden.tenant = 'globex'")
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
            conn.execute("release savepoint nosuch")
        conn.execute("rollback to savepoint a")  # PostgreSQL: acme again; pgwarden: unknown
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute("select name from customers")
        assert "tenant is unknown" in str(refused.value) and refused.value.diag.message_hint
        conn.execute("rollback")
        assert conn.execute("show pgwarden.tenant").fetchone() == (None,)
        assert conn.execute("select 1").fetchone() == (1,)  # what needs no tenant still runs
        conn.execute("set pgwarden.tenant = 'acme'")
        assert conn.execute("select name from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            conn.execute("rollback to savepoint a")  # outside a transaction: fails, and so unknown
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select name from customers")


def test_another_clients_cursors_and_prepared_statements_are_out_of_reach(guarded):
    """On shared backends acme never reaches globex's WITH HOLD cursor or sees its prepared statement text."""
    with connect(guarded, "globex_app") as globex:
        globex.execute("select * from customers where email = 'gus@globex.io'", prepare=True)
        globex.execute("select * from customers where email = %s", ("gus@globex.io",), prepare=True)
        globex.execute("declare gh cursor with hold for select name, ssn, email from customers")
        for _ in range(6):
            with connect(guarded, "acme_app") as conn:
                _run_clean(conn, "select name, statement from pg_prepared_statements")
                _run_clean(conn, "select name, statement from pg_cursors")
                with pytest.raises(psycopg.Error):
                    conn.execute("fetch all from gh")
        assert globex.execute("fetch all from gh").fetchall() == [("Gus", "****", "gus@globex.io")]


@pytest.mark.parametrize("user", ["acme_app", "alice", "token_user"])
def test_tenant_settings_over_the_extended_protocol_are_judged_too(guarded, user):
    """The same SETs as a Parse/Bind/Execute (psycopg prepare=True) are refused and change nothing."""
    with connect(guarded, user) as conn:
        before = conn.execute("show pgwarden.tenant").fetchone()
        for sql in [
            "set pgwarden.tenant = 'globex'",
            "set pgwarden.tenant_token = 'globex.9999999999.AAAA'",
            "select set_config('pgwarden.tenant', 'globex', false)",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql, prepare=True)
        assert conn.execute("show pgwarden.tenant", prepare=True).fetchone() == before
        _run_clean(conn, "select name from customers", prepare=True)


def test_a_refusal_inside_a_transaction_aborts_it_like_an_error(guarded):
    """BEGIN; an allowed write; a refused statement; COMMIT -- nothing of the transaction stays."""
    reset_data()
    with connect(guarded, "acme_app") as conn:
        conn.execute("begin")
        conn.execute("insert into orders (id, customer_id, total) values (95, 1, 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from secrets")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.execute("commit")
        assert conn.execute("select count(*) from orders where id = 95").fetchone() == (0,)
    with psycopg.connect(DIRECT) as direct:
        assert direct.execute("select count(*) from orders where id = 95").fetchone() == (0,)
    reset_data()


@pytest.mark.parametrize("threshold", [0, 5])
def test_a_prepared_tenant_switch_never_leaves_the_old_tenant_in_place(guarded, threshold):
    """psycopg prepares a statement it ran `threshold` times; a Bind of a prepared SET would not
    change the tenant. Each SET either takes effect or is refused: never the old tenant's rows."""
    with psycopg.connect(
        guarded.dsn(user="saas_backend", dbname=DB), autocommit=True, prepare_threshold=threshold
    ) as conn:
        for _ in range(8):
            for tenant in ("acme", "globex"):
                try:
                    conn.execute(f"set pgwarden.tenant = '{tenant}'")
                except psycopg.errors.FeatureNotSupported as refused:
                    assert refused.diag.message_hint
                    conn.execute(f"set pgwarden.tenant = '{tenant}'", prepare=False)
                rows = conn.execute("select tenant_id from customers").fetchall()
                assert rows and {r[0] for r in rows} == {tenant}, (tenant, rows)
