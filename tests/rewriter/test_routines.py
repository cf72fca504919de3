"""User-defined functions and operators that PostgreSQL may pick over the built-ins, and secret settings."""

from __future__ import annotations

import pytest

from proxy.enforce.schema import routines
from rewriter import Allow, Column, Context, Deny, Rewrite, TableRule, UserRoutines, rewrite
from rewriter.classify import statements, walk_statement
from rewriter.secret_settings import SECRET_SETTINGS

ORDERS = TableRule("public.orders", "tenant_id", frozenset({"select"}))
SCHEMA = {"public.orders": (Column("id", "integer"), Column("tenant_id", "text"), Column("total", "numeric"))}
ROUTINES = routines(
    [("public", "upper"), ("public", "order_total"), ("app", "lower"), ("public", "leak_op"), ("public", "citext_eq")],
    [("public", "===", "public", "leak_op"), ("public", "=", "public", "citext_eq"), ("app", "<", "app", "lt")],
)


def ctx(allowed=("public.order_total",), search_path=("public",), routines_=ROUTINES) -> Context:
    return Context({"public.orders": ORDERS}, SCHEMA, "acme", frozenset(allowed), search_path, routines=routines_)


def operators(sql: str) -> list[str]:
    ((kind, fields),) = statements(sql)
    return walk_statement(kind, fields).bare_operators


@pytest.mark.parametrize(
    "sql, ops",
    [
        ("select 1 === 2", ["==="]),
        ("select 1 operator(pg_catalog.+) 2", []),
        ("select 1 where 2 between 1 and 3", ["<=", ">=", "<", ">"]),
        ("select * from a join b using (x)", ["="]),
        ("select * from a natural join b", ["="]),
        ("select 1 where 1 in (select 1)", ["="]),
        ("select 1 where 1 < all (select 1)", ["<"]),
        ("select case 1 when 2 then 3 end", ["="]),
        ("select 1 order by 1 using >", [">"]),
        ("select 1 where 'a' like 'b' and 1 in (1, 2) and 1 is distinct from 2", ["~~", "=", "="]),
    ],
)
def test_operators_looked_up_by_name_are_collected(sql, ops):
    assert operators(sql) == ops


@pytest.mark.parametrize(
    "sql, words",
    [
        ("select upper('x'::varchar)", ["public.upper"]),
        ("select upper(id::varchar) from orders", ["public.upper"]),
        ("select * from upper('x')", ["public.upper"]),
        ("select set_config('x.y', '1', false), upper('x')", ["public.upper"]),
        ("select 1 === 2", ["public.===", "public.leak_op"]),
        ("select id from orders where (id === 1) is not null", ["==="]),
        ("select 1 where 1 = 1", ["public.=", "public.citext_eq"]),
        ("select 1 where 1 in (select 2)", ["public.="]),
        ("select * from orders", ["public.="]),  # pgwarden's own tenant filter would use it
        ("select ('x'::varchar).upper", ["upper"]),
        ("select ('x'::text).pg_read_file", ["pg_read_file"]),
        ("select ('primary_conninfo'::text).current_setting", ["current_setting"]),
        ("select (c.v).current_setting from (select 'archive_command'::text as v) c", ["current_setting"]),
    ],
)
def test_calls_that_may_run_a_user_routine_are_refused(sql, words):
    result = rewrite(sql, ctx())
    assert isinstance(result, Deny) and result.rule == "functions.allow", result
    assert result.hint and all(w in result.message for w in words), result.message


@pytest.mark.parametrize(
    "sql",
    [
        "select pg_catalog.upper('x'::varchar)",
        "select order_total(1)",
        "select lower('X')",  # app.lower is not on the search_path
        "select 1 operator(pg_catalog.=) 1",
        "select 2 < 3",  # app.< is not on the search_path
        "select o.total from orders o",  # a live column, not a call
    ],
)
def test_built_ins_and_allowed_functions_stay_usable(sql):
    assert isinstance(rewrite(sql, ctx(allowed=("public.order_total", "public.citext_eq"))), (Allow, Rewrite))


def test_the_search_path_decides_which_user_routines_can_shadow():
    assert isinstance(rewrite("select lower('X')", ctx(search_path=("app", "public"))), Deny)
    assert isinstance(rewrite("select 2 < 3", ctx(search_path=("app", "public"))), Deny)
    assert isinstance(rewrite("select upper('x')", ctx(search_path=("app",))), Allow)


def test_allowing_the_function_allows_the_shadowing_call_and_operator():
    allowed = ("public.upper", "public.leak_op", "public.citext_eq")
    assert isinstance(rewrite("select upper('x'::varchar)", ctx(allowed=allowed)), Allow)
    assert isinstance(rewrite("select 1 === 2", ctx(allowed=allowed)), Allow)
    assert isinstance(rewrite("select * from orders where id = 1", ctx(allowed=allowed)), Rewrite)


def test_a_shell_operator_is_never_allowed():
    shell = routines([], [("public", "@@@", None, None)])
    result = rewrite("select 1 @@@ 2", ctx(routines_=shell))
    assert isinstance(result, Deny) and "shell operator" in result.message


def test_without_a_live_schema_calls_are_judged_as_before():
    offline = Context({}, {}, None, frozenset({"public.order_total"}))
    assert offline.routines == UserRoutines()
    assert isinstance(rewrite("select upper('x'::varchar), 1 = 1", offline), Allow)
    assert isinstance(rewrite("select 1 === 2", offline), Allow)


def test_schema_rows_become_user_routines():
    r = routines(
        [("public", "upper"), ("public", "upper")],
        [("public", "=", "public", "citext_eq"), ("public", "=", "public", "other_eq")],
    )
    assert r.functions == frozenset({"public.upper"})
    assert r.operators == {"public.=": frozenset({"public.citext_eq", "public.other_eq"})}


@pytest.mark.parametrize(
    "sql",
    [
        "show primary_conninfo",
        "SHOW all",
        "show SSL_PASSPHRASE_COMMAND",
        "show archive_command",
        "select current_setting('restore_command')",
        "select pg_catalog.current_setting('primary_conninfo', true)",
        "select current_setting('primary' || '_conninfo')",
        "select setting from pg_settings where name = 'primary_conninfo'",
        "select setting from pg_settings where name in ('TimeZone', 'archive_command')",
        "select setting from pg_settings where name = 'TimeZone' or name = 'primary_conninfo'",
        "select setting from pg_settings where lower(name) = 'timezone'",
        "select s.setting from pg_settings s, pg_settings t where t.name = 'TimeZone'",
        "with s as (select * from pg_settings) select setting from s where name = 'TimeZone'",
        "select (select string_agg(setting, ',') from pg_settings) from pg_settings where name = 'TimeZone'",
        "select * from pg_catalog.pg_show_all_settings()",
        "select * from pg_file_settings",
    ],
)
def test_secret_settings_are_refused(sql):
    result = rewrite(sql, ctx())
    assert isinstance(result, Deny) and result.hint, result


@pytest.mark.parametrize(
    "sql",
    [
        "show TimeZone",
        "show transaction_isolation",
        "select current_setting('server_version_num')",
        "select current_setting('pgwarden.tenant', true)",
        "select cast(setting as integer) from pg_settings where name = 'max_prepared_transactions'",
        "select s.setting from pg_catalog.pg_settings s where s.name in ('TimeZone', 'DateStyle') and 'x' = name",
    ],
)
def test_settings_without_secrets_stay_readable(sql):
    assert isinstance(rewrite(sql, Context({}, {}, None)), Allow)


def test_the_secret_list_covers_the_brief():
    assert {
        "primary_conninfo",
        "ssl_passphrase_command",
        "archive_command",
        "restore_command",
        "archive_cleanup_command",
        "recovery_end_command",
        "ssl_key_file",
    } <= SECRET_SETTINGS
