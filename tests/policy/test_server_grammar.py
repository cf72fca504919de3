"""PostgreSQL 15 reads system_user, json_object, json_arrayagg, merge_action ... as ordinary names:
pgwarden (PostgreSQL 18's grammar) must judge them as such, through the real proxy and server."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from rewriter.server_grammar import DIFFERENCES, word_rules
from tests.harness import PG_PORT
from tests.policy.conftest import DATA, SCHEMA, policy_proxy

DB = "pgw_grammar"
ADMIN = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"
DIRECT = ADMIN.replace("dbname=postgres", f"dbname={DB}")
LEAKS = ("globex", "Gus", "333-33-3333", "111-11-1111", "222-22-2222", "globex-secret", "acme-secret")

# Objects a bypass role made, named with words PostgreSQL 18 reads as syntax.
OBJECTS = """
create table public.system_user (id int, tenant_id text, secret text);
insert into public.system_user values (1, 'acme', 'acme-secret'), (2, 'globex', 'globex-secret');
create function public.json_object() returns text language sql security definer
  as $$ select string_agg(tenant_id || ':' || name || ':' || ssn, ',') from customers $$;
create function public.merge_action() returns text language sql security definer
  as $$ select string_agg(tenant_id || ':' || ssn, ',') from customers $$;
create function public.json_table(text) returns setof customers language sql security definer
  as $$ select * from customers $$;
create function public.leak_step(text, text) returns text language sql security definer
  as $$ select coalesce($1, '') || (select string_agg(tenant_id || ':' || ssn, ',') from customers) $$;
create aggregate public.json_arrayagg(text) (sfunc = public.leak_step, stype = text);
create schema system_user;
create table system_user.countries (code text, name text);
insert into system_user.countries values ('xx', 'globex-secret');
"""


def _direct():
    return psycopg.connect(DIRECT, autocommit=True)


@pytest.fixture(scope="module")
def grammar_db():
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    with _direct() as conn:
        assert conn.info.server_version // 10000 == 15, "these tests reproduce the issue on PostgreSQL 15"
        conn.execute(SCHEMA)
        conn.execute(DATA)
        conn.execute(OBJECTS)
    yield DB
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request, grammar_db, tmp_path_factory):
    proc = policy_proxy(tmp_path_factory.mktemp(f"grammar-{request.param}"), request.param)
    yield proc
    proc.stop()


def _tenant(proxy):
    return psycopg.connect(proxy.dsn(user="acme_app", dbname=DB), autocommit=True)


def _refused(conn, sql, prepare, *words):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql, prepare=prepare)
    assert info.value.diag.message_hint, sql
    assert all(w in info.value.diag.message_primary for w in words), (sql, info.value.diag.message_primary)
    assert conn.execute("select 1").fetchone() == (1,)  # the connection stays usable


def _clean(conn, sql, prepare=False):
    """Run `sql`: refused, an error, or rows without another tenant's values or acme's unmasked SSNs."""
    try:
        rows = conn.execute(sql, prepare=prepare).fetchall()
    except psycopg.Error as exc:
        text = str(exc) + str(exc.diag.message_detail)
    else:
        text = repr(rows)
    assert not [leak for leak in LEAKS if leak in text], (sql, text)


RELATIONS = [
    "select * from system_user",
    "SELECT * FROM SYSTEM_USER",
    "select * from System_User s",
    "select s.secret from countries, system_user s",
    "table system_user",
    "with x as (select * from system_user) select * from x",
    "select c.name, s.* from customers c join system_user s on true",
    "select (select secret from system_user limit 1)",
    "select * from public.system_user",
    'select * from "system_user"',
]


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("sql", RELATIONS)
def test_an_unlisted_table_named_system_user_is_refused(proxy, sql, prepare):
    with _tenant(proxy) as conn:
        _refused(conn, sql, prepare, "system_user")


CALLS = [
    "select json_object()",
    "SELECT JSON_OBJECT()",
    "select Json_Object() as x",
    "select json_arrayagg(name) from customers",
    "select JSON_ARRAYAGG(name) from countries",
    "select merge_action()",
    "select * from json_table('x')",
    "select (json_object())",
    "select c.name from customers c where c.name <> json_object()",
    "select public.json_object()",
    "explain analyze select json_object()",
    "copy (select json_object()) to stdout",
    "prepare leak as select merge_action()",
    "update orders set total = 1 where json_object() is not null",
    "insert into orders (id, tenant_id, customer_id, total) select 99, 'acme', 1, length(json_object())",
    "select * from countries where exists (select 1 from json_table('x'))",
    "select json_arrayagg(code) over () from countries",
    "select x from (values (json_object())) v(x)",
]


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("sql", CALLS)
def test_the_databases_own_sql_json_and_merge_names_are_refused(proxy, sql, prepare):
    with _tenant(proxy) as conn:
        _refused(conn, sql, prepare)
        _clean(conn, sql, prepare)


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; select json_object()",
        "select * from countries; table system_user",
        "begin; select merge_action(); commit",
    ],
)
def test_a_message_of_several_statements_is_judged_whole(proxy, sql):
    with _tenant(proxy) as conn:
        _refused(conn, sql, False)
        _clean(conn, sql)
        conn.execute("rollback")


def test_update_with_a_target_alias_named_system_user_does_not_copy_the_unmasked_row(proxy):
    sql = 'update customers as "system_user" set name = system_user::text where id = 1 returning name'
    try:
        with _tenant(proxy) as conn:
            _clean(conn, sql)
            _clean(conn, sql.replace("returning name", "returning *"))
            _clean(conn, 'update customers as "system_user" set name = (system_user).ssn where id = 1 returning name')
        with _direct() as conn:
            assert conn.execute("select name from customers where id = 1").fetchone()[0] in ("Ann", "****")
    finally:
        with _direct() as conn:
            conn.execute("update customers set name = 'Ann' where id = 1")


@pytest.mark.parametrize(
    "sql",
    [
        "select system_user from customers system_user",
        "select system_user::text from customers as system_user",
        "select to_json(system_user) from customers system_user",
    ],
)
def test_a_whole_row_named_system_user_is_masked_or_refused(proxy, sql):
    with _tenant(proxy) as conn:
        _clean(conn, sql)
        _clean(conn, sql, prepare=True)


@pytest.mark.parametrize(
    "setting",
    [
        "set search_path to system_user, public",
        "SET search_path = SYSTEM_USER",
        "set search_path to public, system_user",
    ],
)
def test_a_search_path_naming_a_schema_system_user_is_followed(proxy, setting):
    """15 reads the word as the schema system_user; pgwarden must resolve later names through it."""
    with _tenant(proxy) as conn:
        try:
            conn.execute(setting)
        except psycopg.errors.InsufficientPrivilege:
            return  # refused: the search_path is unchanged
        for sql in ["select * from countries", "select name from countries where code = 'xx'"]:
            _clean(conn, sql)
            _clean(conn, sql, prepare=True)
        conn.execute("reset search_path")


def test_json_and_format_stay_usable_as_the_server_reads_them(proxy):
    with _tenant(proxy) as conn:
        assert conn.execute("""select '{"a": 1}'::JSON ->> 'a'""").fetchone() == ("1",)
        assert conn.execute("select format('%s-%s', name, id) from customers order by id").fetchall() == [
            ("Ann-1",),
            ("Bob-2",),
        ]
        assert conn.execute("select pg_catalog.json_object('{a,1}'::text[])::text").fetchone() == ('{"a" : "1"}',)


@pytest.mark.parametrize("word", sorted(w for w, r in word_rules(15).items() if r.action in ("quote", "keep")))
def test_postgresql_15_reads_each_quoted_word_as_a_name(grammar_db, word):
    """The data's claim, checked on the server: unquoted, PostgreSQL 15 reads the word as the identifier."""
    with _direct() as conn:
        assert conn.execute(f'select {word} from (select 1 as "{word}") as t').fetchone() == (1,)
        assert conn.execute(f'select t.{word.upper()} from (select 2 as "{word}") as t').fetchone() == (2,)


REJECTED = [f for f in DIFFERENCES["forms"] if f["older"].get("15") == "rejected"]


@pytest.mark.parametrize("form", REJECTED, ids=[f["id"] for f in REJECTED])
def test_postgresql_15_rejects_each_form_the_data_calls_rejected(grammar_db, form):
    with _direct() as conn, pytest.raises(psycopg.errors.SyntaxError):
        conn.execute(form["example"])


def test_check_live_reports_the_server_version(proxy):
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(proxy.config_path), "--live", "--database", DB],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"database '{DB}': PostgreSQL 15, supported" in out.stdout
