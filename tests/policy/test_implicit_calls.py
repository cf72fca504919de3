"""Functions PostgreSQL calls without being named -- casts, type input/output, domain CHECKs, default
operator classes -- through the real proxy: each leaking function must never run for a policed tenant.

Every leaking function here is SECURITY DEFINER, reads every tenant's customers and writes a marker
row into `marks`; the test checks `marks` over a direct connection after each attempt.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest

from tests.harness import PG_PORT
from tests.policy.conftest import DATA, POLICY, SCHEMA, policy_proxy

DB = "pgw_implicit"
DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={{}}"

OBJECTS = """
create table marks (what text);
create function leak_text(t text) returns text language sql security definer
  as $$ insert into marks values ('leak'); select string_agg(name || ':' || ssn, ',') from public.customers $$;
-- a composite type with an explicit cast from text that reads every tenant's rows
create type tref as (v text);
create function tref_leak(text) returns tref language sql security definer
  as $$ insert into marks values ('tref'); select row(string_agg(name || ':' || ssn, ','))::tref from customers $$;
create cast (text as tref) with function tref_leak(text);
-- assignment and implicit casts to types of table columns
create type tassign as (v text);
create function tassign_leak(text) returns tassign language sql security definer
  as $$ insert into marks values ('tassign'); select row(string_agg(name || ':' || ssn, ','))::tassign from customers $$;
create cast (text as tassign) with function tassign_leak(text) as assignment;
create type timpl as (v text);
create function timpl_leak(text) returns timpl language sql security definer
  as $$ insert into marks values ('timpl'); select row(string_agg(name || ':' || ssn, ','))::timpl from customers $$;
create cast (text as timpl) with function timpl_leak(text) as implicit;
-- a domain whose CHECK calls a leaking function, and one over it
create function chk(t text) returns bool language sql security definer
  as $$ insert into marks values ('chk'); select true $$;
create domain dchk as text check (chk(value));
create domain dchk_outer as dchk;
-- a type with a user default btree operator class (its operators outside the search_path)
create type tsort as (v int);
create schema ops;
create function ops.tsort_cmp(a tsort, b tsort) returns int language plpgsql security definer
  as $$ begin insert into marks values ('cmp'); return btint4cmp(a.v, b.v); end $$;
create function ops.tsort_lt(tsort, tsort) returns bool language sql as 'select ops.tsort_cmp($1, $2) < 0';
create function ops.tsort_le(tsort, tsort) returns bool language sql as 'select ops.tsort_cmp($1, $2) <= 0';
create function ops.tsort_eq(tsort, tsort) returns bool language sql as 'select ops.tsort_cmp($1, $2) = 0';
create function ops.tsort_ge(tsort, tsort) returns bool language sql as 'select ops.tsort_cmp($1, $2) >= 0';
create function ops.tsort_gt(tsort, tsort) returns bool language sql as 'select ops.tsort_cmp($1, $2) > 0';
create operator ops.< (leftarg = tsort, rightarg = tsort, function = ops.tsort_lt);
create operator ops.<= (leftarg = tsort, rightarg = tsort, function = ops.tsort_le);
create operator ops.= (leftarg = tsort, rightarg = tsort, function = ops.tsort_eq);
create operator ops.>= (leftarg = tsort, rightarg = tsort, function = ops.tsort_ge);
create operator ops.> (leftarg = tsort, rightarg = tsort, function = ops.tsort_gt);
create operator class ops.tsort_ops default for type tsort using btree as
  operator 1 ops.<, operator 2 ops.<=, operator 3 ops.=, operator 4 ops.>=, operator 5 ops.>,
  function 1 ops.tsort_cmp(tsort, tsort);
-- safe ones: an enum, a domain whose CHECK uses built-ins only, a domain whose CHECK function is allowed
create type mood as enum ('happy', 'sad');
create domain dsafe as text check (value <> '' and length(value) < 10);
create function harmless(t text) returns bool language sql immutable as $$ select t <> 'no' $$;
create domain dallowed as text check (harmless(value));
create table holder (id int primary key, tenant_id text not null, a tassign, i timpl, d dchk, o dchk_outer,
                     s tsort, m mood, ds dsafe, da dallowed);
insert into holder (id, tenant_id, m, ds, da) values (1, 'acme', 'happy', 'ok', 'ok'),
                                                    (2, 'globex', 'sad', 'gus', 'gus');
create view v_holder as select id, tenant_id, s from holder;
create table plain (id int primary key, tenant_id text not null, m mood, ds dsafe, da dallowed);
-- a cast from a table's row type: `r::json` runs it (any whole-row reference is refused)
create table rowcast (id int, tenant_id text not null, v text);
insert into rowcast values (1, 'acme', 'a'), (2, 'globex', 'g');
create function rowcast_json(r rowcast) returns json language sql security definer
  as $$ insert into marks values ('rowcast'); select to_json(string_agg(name || ':' || ssn, ',')) from customers $$;
create cast (rowcast as json) with function rowcast_json(rowcast);
truncate marks;
"""

HOLDER = """
  public.holder:
    grants: {app: [select, insert, update, delete]}
  public.v_holder:
    grants: {app: [select]}
  public.plain:
    grants: {app: [select, insert, update, delete]}
  public.rowcast:
    grants: {app: [select]}
functions:
  allow: [public.harmless]
"""
IMPLICIT_POLICY = POLICY.replace("\ndefault: deny", HOLDER.rstrip() + "\ndefault: deny")

REFUSED = {
    "explicit-cast": ("select ('x'::text)::tref", "tref"),
    "cast-column": ("select cast(name as tref) from customers", "tref"),
    "typed-literal": ("select tref '(x)'", "tref"),
    "function-style": ("select tref('x'::text)", "tref"),
    "function-style-qualified": ("select public.tref('x'::text)", "tref"),
    "field-notation": ("select ('x'::text).tref", "tref"),
    "qualified": ("select 'x'::text::public.tref", "public.tref"),
    "quoted-upper": ("select 'x'::text::\"tref\", 'x'::text::TREF", "tref"),
    "array": ("select '{x}'::text[]::tref[]", "tref"),
    "array-underscore": ("select array['x'::text]::_tref", "tref"),
    "populate": ('select * from json_populate_record(null::tref, \'{"v": "x"}\')', "tref"),
    "coldeflist": ('select * from json_to_record(\'{"a": "x"}\') as r(a dchk)', "dchk"),
    "nested-subquery": ("select * from customers where name = (select ('x'::text)::tref)::text", "tref"),
    "assignment-insert": ("insert into holder (id, a) values (5, 'x'::text)", '"a"'),
    "assignment-update": ("update holder set a = 'x'::text where id = 1", '"a"'),
    "insert-no-columns": ("insert into holder values (6, 'acme')", "holder"),
    # a domain's CHECK runs on the NULL default of a column the INSERT leaves out
    "insert-omitting-domain": ("insert into holder (id, m) values (8, 'sad')", "holder"),
    "copy-to": ("copy holder to stdout", "holder"),
    "implicit-comparison": ("select id from holder where i = 'x'::text", '"i"'),
    "star": ("select * from holder", "holder"),
    "qualified-star": ("select h.* from holder h", "holder"),
    "returning-star": ("update holder set m = 'happy' where id = 1 returning *", "holder"),
    "whole-row": ("select to_json(h) from holder h", "holder"),
    "order-by": ("select id from holder order by s", '"s"'),
    "distinct": ("select distinct s from holder", '"s"'),
    "group-by": ("select s, count(*) from holder group by s", '"s"'),
    "view-column": ("select id from v_holder order by s", '"s"'),
    "domain-cast": ("select 'x'::dchk", "dchk"),
    "domain-nested": ("select cast('x' as dchk_outer)", "dchk_outer"),
    "domain-insert": ("insert into holder (id, d) values (7, 'x')", '"d"'),
    "domain-update": ("update holder set o = 'x' where id = 1", '"o"'),
    "record-in": ("select record_in('(x)', 'public.tref'::regtype, -1)", "record_in"),
    "prepare-typed": ("prepare p(tref) as select 1", "tref"),
    "using": ("select 1 from holder join holder h2 using (s)", '"s"'),
    "natural": ("select 1 from holder natural join plain", "holder"),
    "table": ("table holder", "holder"),
    "field-of-column": ("select (a).v from holder", '"a"'),
    "count-distinct-row": ("select count(distinct holder) from holder", "whole row"),
    "window": ("select id, rank() over (order by s) from holder", '"s"'),
    "union-literal": ("select i from holder union select 'x'", '"i"'),
    "insert-select": ("insert into holder (id) select 50", "holder"),
    "cte": ("with x as (select ('x'::text)::tref as r) select 1 from x", "tref"),
    "lateral": ("select * from customers c, lateral (select cast(c.name as tref)) x", "tref"),
    "explain-analyze": ("explain analyze select 'x'::dchk", "dchk"),
    "xmltable": ("select * from xmltable('/r' passing '<r/>' columns a dchk path '.')", "dchk"),
    "whole-row-table": ("select null::holder", "holder"),
    "row-cast-to-json": ("select to_json(r) from rowcast r", "whole row of public.rowcast"),
    "row-cast-explicit": ("select r::json from rowcast r", "rowcast"),
    "three-part": (f"select 'x'::text::{DB}.public.tref", "tref"),
    # a column alias list renames the unsafe column: its new name must not hide it
    "alias-list": ("select z from holder as h(a1, a2, a3, z) order by z", "column alias list"),
    "alias-list-lateral": (
        "select length(x::text) from lateral (select 1) q, holder h(p, q2, r, x)",
        "column alias list",
    ),
}


@pytest.fixture(scope="module")
def implicit_db():
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    with psycopg.connect(DIRECT.format(DB), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(DATA)
        conn.execute(OBJECTS)
    yield DB
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request, implicit_db, tmp_path_factory):
    proc = policy_proxy(tmp_path_factory.mktemp(f"implicit-{request.param}"), request.param, policy=IMPLICIT_POLICY)
    yield proc
    proc.stop()


def _connect(proxy, user="acme_app"):
    return psycopg.connect(proxy.dsn(user=user, dbname=DB), autocommit=True)


def _marks() -> list:
    with psycopg.connect(DIRECT.format(DB), autocommit=True) as conn:
        return conn.execute("select what from marks").fetchall()


def _refused(conn, sql: str, word: str, **kw) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql, **kw)
    assert "functions.allow" in info.value.diag.message_hint, sql
    assert word in info.value.diag.message_primary, (sql, info.value.diag.message_primary)


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("prepare", [False, True])
def test_implicit_calls_are_refused_and_never_run(proxy, name, prepare):
    sql, word = REFUSED[name]
    with _connect(proxy) as conn:
        _refused(conn, sql, word, prepare=prepare)
        assert conn.execute("select 1").fetchone() == (1,)
    assert _marks() == [], f"{name}: a leaking function ran"


def test_a_refusal_names_the_function_to_review(proxy):
    with _connect(proxy) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute("select ('x'::text)::tref")
    assert "public.tref_leak" in info.value.diag.message_primary
    assert "public.tref_leak" in info.value.diag.message_hint
    with _connect(proxy) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute("select 'x'::dchk_outer")
    assert "public.chk" in info.value.diag.message_primary


def test_a_parse_declaring_a_parameter_of_an_unsafe_type_is_refused(proxy):
    with psycopg.connect(DIRECT.format(DB)) as direct:
        oid = direct.execute("select 'dchk'::regtype::oid").fetchone()[0]
    with _connect(proxy) as conn:
        result = conn.pgconn.prepare(b"typed", b"select $1", [oid])
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42501"
        assert b"dchk" in result.error_field(psycopg.pq.DiagnosticField.MESSAGE_PRIMARY)
        assert conn.execute("select 1").fetchone() == (1,)
    assert _marks() == []


def test_built_in_casts_enums_and_safe_domains_still_work(proxy):
    with _connect(proxy) as conn:
        assert (
            conn.execute(
                "select '1'::int, now()::date is not null, 'x'::text, cast(2 as bigint), int4('3'), '{1,2}'::int[]"
            ).fetchone()[0]
            == 1
        )
        assert conn.execute("select name::text from customers order by id").fetchall() == [("Ann",), ("Bob",)]
        assert conn.execute("select id, m, ds, da from holder order by m, ds").fetchall() == [(1, "happy", "ok", "ok")]
        assert conn.execute("select id, v from rowcast").fetchall() == [(1, "a")]
        assert conn.execute("select 'sad'::mood, 'fine'::dsafe, 'yes'::dallowed").fetchone() == ("sad", "fine", "yes")
        conn.execute("update holder set ds = 'ok', da = 'ok' where id = 1 and m = 'happy'")
        conn.execute("delete from holder where id = 9")
        conn.execute("insert into plain values (9, 'acme', 'sad', 'x', 'y')")
        conn.execute("insert into plain (id, m) values (10, 'happy')")
        assert conn.execute("select * from plain order by m").fetchall() == [
            (10, "acme", "happy", None, None),
            (9, "acme", "sad", "x", "y"),
        ]
        conn.execute("update plain set ds = 'z' where id = 9")
        conn.execute("delete from plain")
    assert _marks() == []


def test_extended_protocol_parameters_of_unsafe_types_are_refused(proxy):
    async def attempt() -> None:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user="acme_app", database=DB, ssl=False)
        try:
            for sql, args in [
                ("select $1::text::tref", ("x",)),
                ("insert into holder (id, d) values ($1, $2)", (5, "x")),
                ("select id from holder where d = $1", ("x",)),
                ("select $1::dchk", ("x",)),
                ("select id from holder order by s limit $1", (1,)),
            ]:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(sql, *args)
            assert await conn.fetchval("select $1::dsafe", "fine") == "fine"
        finally:
            await conn.close()

    asyncio.run(attempt())
    assert _marks() == []


def test_a_cast_a_bypass_role_creates_through_pgwarden_is_known_at_once(proxy):
    with _connect(proxy, user="postgres") as admin, _connect(proxy) as conn:
        admin.execute("create type tlate as (v text)")
        admin.execute(
            "create function tlate_leak(text) returns tlate language sql security definer as $$ "
            "insert into marks values ('tlate'); select row('x')::tlate $$"
        )
        admin.execute("create cast (text as tlate) with function tlate_leak(text)")
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    conn.execute("select ('x'::text)::tlate")
                except psycopg.errors.InsufficientPrivilege as exc:
                    assert "public.tlate_leak" in exc.diag.message_primary
                    break
                assert time.monotonic() < deadline, "the new cast was not learnt within 5 s"
                time.sleep(0.05)
        finally:
            admin.execute("drop type tlate cascade")
            admin.execute("truncate marks")
