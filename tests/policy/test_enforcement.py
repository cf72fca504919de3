"""Tenant isolation, masks and access rules enforced by a real pgwarden on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest

from tests.harness import PG_PORT
from tests.policy.conftest import DB, TOKEN_KEY, connect, reset_data


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def test_a_tenant_sees_only_its_rows_whatever_the_predicate(guarded):
    with connect(guarded, "acme_app") as conn:
        assert rows(conn, "select id from customers order by id") == [(1,), (2,)]
        assert rows(conn, "select id from customers where id = 3 or true order by id") == [(1,), (2,)]
        assert rows(conn, "select count(*) from orders o join customers c on c.id = o.customer_id") == [(2,)]
        assert (
            rows(conn, "select sum(total) from orders") == [(150.50,)]
            or str(rows(conn, "select sum(total) from orders")[0][0]) == "150.50"
        )
    with connect(guarded, "globex_app") as conn:
        assert rows(conn, "select name from customers") == [("Gus",)]


def test_masks_apply_to_the_roles_named(guarded):
    with connect(guarded, "acme_app") as conn:
        assert rows(conn, "select ssn from customers order by id") == [("****",), ("****",)]
        assert rows(conn, "select count(*) from customers where ssn = '111-11-1111'") == [(0,)]
        assert rows(conn, "select email from customers where id = 1") == [("ann@acme.io",)]


def test_a_session_without_tenant_cannot_touch_tenant_tables(guarded):
    with connect(guarded, "alice") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("select * from customers")
        assert "tenant" in str(info.value)
        assert rows(conn, "select count(*) from countries") == [(2,)]
        assert rows(conn, "select 1") == [(1,)]


def test_unlisted_tables_ddl_and_dangerous_functions_are_refused_with_hint(guarded):
    with connect(guarded, "acme_app") as conn:
        for sql in [
            "select * from secrets",
            "truncate orders",
            "drop table orders",
            "select pg_read_file('/etc/passwd')",
            "select * from pg_stat_activity",
            "select query_to_xml('select * from secrets', true, true, '')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert info.value.diag.message_hint and "policy" in info.value.diag.message_hint
            assert rows(conn, "select 1") == [(1,)]  # the connection stays usable


def test_writes_are_confined_to_the_tenant(guarded):
    reset_data()
    with connect(guarded, "acme_app") as conn:
        conn.execute("update orders set total = 0 where id = 12 or true")
        conn.execute("delete from orders where id = 12")
        conn.execute("insert into orders (id, customer_id, total) values (20, 1, 5)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into orders (id, tenant_id, total) values (21, 'globex', 5)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into orders (id, tenant_id, total) values (%s, %s, 5)", (22, "globex"))
        conn.execute("insert into orders (id, tenant_id, total) values (%s, %s, 5)", (23, "acme"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update orders set tenant_id = 'globex' where id = 10")
    with psycopg.connect(f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={DB}") as direct:
        assert rows(direct, "select id, tenant_id, total from orders where tenant_id = 'globex'") == [
            (12, "globex", 999.99)
        ] or rows(direct, "select id from orders where tenant_id = 'globex'") == [(12,)]
        assert rows(direct, "select tenant_id from orders where id in (20, 23) order by id") == [("acme",), ("acme",)]
        assert rows(direct, "select count(*) from orders where id in (21, 22)") == [(0,)]
    reset_data()


def test_error_details_that_could_show_other_tenants_values_are_hidden(guarded):
    reset_data()
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            conn.execute("insert into customers (id, name, email) values (9, 'X', 'gus@globex.io')")
        assert "gus@globex.io" not in str(info.value)
        assert "hidden by pgwarden" in (info.value.diag.message_detail or "")
    with connect(guarded, "postgres") as conn:  # bypass roles see PostgreSQL's own detail
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            conn.execute("insert into customers (id, tenant_id, email) values (9, 'x', 'gus@globex.io')")
        assert "gus@globex.io" in (info.value.diag.message_detail or "")


def test_bypass_role_sees_everything(guarded):
    with connect(guarded, "postgres") as conn:
        assert rows(conn, "select count(*) from customers") == [(3,)]
        assert rows(conn, "select secret from secrets") == [("s3cr3t",)]


def test_trusted_user_sets_the_tenant_others_may_not(guarded):
    with connect(guarded, "saas_backend") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from customers")  # no tenant yet
        conn.execute("set pgwarden.tenant = 'globex'")
        assert rows(conn, "select name from customers") == [("Gus",)]
        assert rows(conn, "show pgwarden.tenant") == [("globex",)]
        conn.execute("set pgwarden.tenant = 'acme'")
        assert rows(conn, "select count(*) from customers") == [(2,)]
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set pgwarden.tenant = 'globex'")
        assert rows(conn, "select count(*) from customers") == [(2,)]


def _token(tenant: str, expiry: int) -> str:
    import base64
    import hashlib
    import hmac

    body = f"{tenant}.{expiry}".encode()
    sig = hmac.new(TOKEN_KEY.encode(), body, hashlib.sha256).digest()
    return f"{tenant}.{expiry}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def test_signed_token_sets_the_tenant_and_a_bad_one_changes_nothing(guarded):
    with connect(guarded, "token_user") as conn:
        conn.execute(f"set pgwarden.tenant_token = '{_token('globex', int(time.time()) + 60)}'")
        assert rows(conn, "select name from customers") == [("Gus",)]
        forged = _token("acme", int(time.time()) + 60)[:-2] + "xx"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"set pgwarden.tenant_token = '{forged}'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"set pgwarden.tenant_token = '{_token('acme', int(time.time()) - 5)}'")
        assert rows(conn, "select name from customers") == [("Gus",)]


def test_prepared_statements_follow_the_tenant_switch(guarded):
    async def run():
        conn = await asyncpg.connect(guarded.url(user="saas_backend", dbname=DB))
        try:
            await conn.execute("set pgwarden.tenant = 'acme'")
            q = "select count(*) from customers where id > $1"
            assert await conn.fetchval(q, 0) == 2
            await conn.execute("set pgwarden.tenant = 'globex'")
            assert await conn.fetchval(q, 0) == 1  # the cached statement is rewritten again
        finally:
            await conn.close()

    asyncio.run(run())


def test_asyncpg_as_a_tenant_with_default_statement_cache(guarded):
    async def one(i: int) -> None:
        conn = await asyncpg.connect(guarded.url(user="acme_app", dbname=DB))
        try:
            for _ in range(10):
                got = await conn.fetch("select id, ssn from customers where id > $1 order by id", 0)
                assert [tuple(r) for r in got] == [(1, "****"), (2, "****")]
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 60)

    asyncio.run(main())


def test_search_path_is_tracked_and_set_local_of_it_refused(guarded):
    with connect(guarded, "acme_app") as conn:
        conn.execute("set search_path = pg_catalog, public")
        assert rows(conn, "select count(*) from customers") == [(2,)]
        with conn.transaction():
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute("set local search_path = pg_catalog")
            assert "SET LOCAL search_path" in str(info.value)


def test_a_statement_prepared_by_a_bypass_role_is_not_reused_unrewritten(guarded):
    """The proxy-wide statement cache is keyed by text: a tenant's Parse of the same text
    must still be rewritten, however the Parse is answered."""
    query = "select count(*) from customers where id > $1"

    async def run():
        admin = await asyncpg.connect(guarded.url(user="postgres", dbname=DB))
        tenant = await asyncpg.connect(guarded.url(user="acme_app", dbname=DB))
        try:
            assert await admin.fetchval(query, 0) == 3
            stmt = await tenant.prepare(query)
            assert await stmt.fetchval(0) == 2
            assert await tenant.fetchval(query, 0) == 2
        finally:
            await admin.close()
            await tenant.close()

    asyncio.run(run())


def test_startup_parameters_cannot_change_identity_or_parsing(guarded):
    for options in ("-c role=postgres", "-c session_authorization=postgres", "-c standard_conforming_strings=off"):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(guarded.dsn(user="acme_app", dbname=DB, options=f"'{options}'"))
        assert "startup parameter refused" in str(info.value), options
    with psycopg.connect(guarded.dsn(user="acme_app", dbname=DB, options="'-c TimeZone=UTC'")) as conn:
        assert conn.execute("select count(*) from customers").fetchone() == (2,)
