"""EXPLAIN, NOTIFY, row locks and statistics: refused to policed sessions whatever the spelling (pure rewrite())."""

from __future__ import annotations

import pytest

from rewriter import Allow, Deny, Rewrite, rewrite
from rewriter.channels import scoped_channel
from rewriter.classify import statements
from rewriter.locking import locks
from rewriter.side_channels import explain_analyzes
from rewriter.statistics import statistics_function, statistics_relation

from .schema import context

EXPLAINS = [
    "EXPLAIN ANALYZE SELECT * FROM customers",
    "explain analyse select * from customers",
    "EXPLAIN (ANALYZE) SELECT * FROM customers WHERE id = 15",
    "EXPLAIN (ANALYZE true) SELECT 1",
    "EXPLAIN (ANALYZE on) SELECT 1",
    "EXPLAIN (analyse 1) SELECT 1",
    "EXPLAIN (\"analyze\" 'yes') SELECT 1",
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id FROM orders WHERE id BETWEEN 111 AND 115",
    "EXPLAIN (ANALYZE) INSERT INTO customers (id, name) VALUES (15, 'x') ON CONFLICT DO NOTHING",
    "EXPLAIN ANALYZE VERBOSE DELETE FROM orders",
    "/* c */ explain\n(\nANALYZE\n) select 1",
    "EXPLAIN (ANALYZE false, ANALYZE true) SELECT 1",
    "EXPLAIN (ANALYZE 2) SELECT 1",
    "EXPLAIN ANALYZE EXECUTE s(1)",
    "select 1; explain analyze select * from customers",
]
PLAIN_EXPLAINS = [
    "EXPLAIN SELECT * FROM customers",
    "EXPLAIN (COSTS OFF) SELECT * FROM customers WHERE id = 1",
    "EXPLAIN (ANALYZE off) SELECT 1",
    "EXPLAIN (ANALYZE 0) SELECT 1",
    "EXPLAIN (ANALYZE 'false') SELECT 1",
    "EXPLAIN VERBOSE SELECT 1",
    "EXPLAIN (FORMAT JSON) SELECT 1",
]


@pytest.mark.parametrize("sql", EXPLAINS)
def test_explain_analyze_is_refused_in_every_spelling(sql):
    result = rewrite(sql, context())
    assert isinstance(result, Deny) and result.message.startswith("EXPLAIN ANALYZE is refused"), result
    assert result.hint and result.sqlstate == "42501"


@pytest.mark.parametrize("sql", PLAIN_EXPLAINS)
def test_plain_explain_is_refused_for_its_statistics(sql):
    result = rewrite(sql, context())
    assert isinstance(result, Deny) and result.message.startswith("EXPLAIN is refused"), result


def test_explain_analyzes_reads_options_as_postgresql_does():
    def opts(sql):
        return statements(sql)[0][1]

    assert explain_analyzes(opts("EXPLAIN ANALYSE SELECT 1"))
    assert explain_analyzes(opts("EXPLAIN (ANALYZE 'on') SELECT 1"))
    assert not explain_analyzes(opts("EXPLAIN (ANALYZE OFF) SELECT 1"))
    assert not explain_analyzes(opts("EXPLAIN (BUFFERS) SELECT 1"))


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; notify x",
        "notify x; select 1",
        "PREPARE p AS NOTIFY x",
        "select pg_notify(current_user, 'y')",
        "select pg_notify('x', 'y') from customers",
        "select pg_notify('x', 'y'), 1",
        "select pg_notify('x' || 'z', 'y')",
        "select upper(pg_notify('x', 'y')::text)",
        "begin; notify x; commit",
    ],
)
def test_notify_that_cannot_be_scoped_is_refused(sql):
    result = rewrite(sql, context())
    assert isinstance(result, Deny) and result.hint, result


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('NOTIFY globex_jobs, \'{"tenant": "globex"}\'', 'NOTIFY {c}, \'{{"tenant": "globex"}}\''),
        ("notify x", "NOTIFY {c}"),
        ("NoTiFy/**/x", "NOTIFY {c}"),
        ("NOTIFY x, 'it''s'", "NOTIFY {c}, 'it''s'"),
        ("select pg_notify('x', 'y')", "SELECT pg_catalog.pg_notify('{c}', 'y')"),
        ("select pg_catalog.pg_notify('x', 'y') as sent", "SELECT pg_catalog.pg_notify('{c}', 'y') AS \"sent\""),
    ],
)
def test_notify_goes_to_the_tenants_channel(sql, expected):
    result = rewrite(sql, context())
    assert isinstance(result, Rewrite) and result.sql == expected.format(
        c=scoped_channel("acme", "x" if "globex" not in sql else "globex_jobs")
    )


def test_scoped_channels_differ_per_tenant_and_fit_an_identifier():
    assert rewrite('NOTIFY "Globex Jobs"', context()).sql == f"NOTIFY {scoped_channel('acme', 'Globex Jobs')}"
    assert scoped_channel("acme", "x") != scoped_channel("globex", "x") != scoped_channel("acme", "y")
    assert len(scoped_channel("t" * 500, "c" * 63).encode()) <= 63
    assert isinstance(rewrite("NOTIFY x", context(tenant=None)), Deny)


def test_auto_explain_settings_are_refused():
    for sql in (
        "SET auto_explain.log_analyze = on",
        "set AUTO_EXPLAIN.log_level = notice",
        "select set_config('auto_explain.log_min_duration', '0', false)",
    ):
        assert isinstance(rewrite(sql, context()), Deny), sql


# countries: shared, select only; notes: shared, select + update; orders/customers: every grant.
LOCKS_REFUSED = [
    "SELECT * FROM countries FOR UPDATE",
    "SELECT * FROM countries FOR NO KEY UPDATE",
    "SELECT * FROM countries FOR SHARE",
    "SELECT * FROM countries FOR KEY SHARE",
    "SELECT * FROM countries FOR UPDATE NOWAIT",
    "SELECT * FROM countries FOR SHARE SKIP LOCKED",
    "SELECT * FROM public.countries c WHERE code = 'fr' FOR UPDATE OF c",
    "SELECT * FROM orders o JOIN countries c ON true FOR UPDATE",
    "SELECT * FROM orders o JOIN countries c ON true FOR UPDATE OF o FOR SHARE OF c",
    "SELECT * FROM orders o, (SELECT * FROM countries) s FOR UPDATE OF s",
    "SELECT * FROM (SELECT * FROM (SELECT * FROM countries) a) b FOR KEY SHARE",
    "SELECT * FROM orders WHERE customer_id IN (SELECT 1 FROM countries FOR UPDATE)",
    "SELECT (SELECT code FROM countries LIMIT 1 FOR SHARE)",
    "WITH x AS (SELECT * FROM countries FOR UPDATE) SELECT * FROM x",
    "WITH x AS (SELECT 1) SELECT * FROM x, countries FOR UPDATE",
    "DECLARE c CURSOR FOR SELECT * FROM countries FOR UPDATE",
    "INSERT INTO orders (id, customer_id) SELECT 1, 1 FROM countries FOR UPDATE",
    "UPDATE orders SET total = 0 WHERE customer_id IN (SELECT 1 FROM countries FOR UPDATE)",
    "SELECT * FROM countries TABLESAMPLE SYSTEM (50) FOR UPDATE",
    "SELECT * FROM (countries JOIN orders ON true) j FOR UPDATE",
    "SELECT * FROM pg_class FOR SHARE",
    "SELECT * FROM pg_catalog.pg_namespace n FOR KEY SHARE OF n",
    "PREPARE p AS SELECT * FROM countries FOR UPDATE",
]
LOCKS_ALLOWED = [
    "SELECT * FROM orders FOR UPDATE",
    "SELECT * FROM customers FOR SHARE",
    "SELECT * FROM notes FOR UPDATE",
    "SELECT * FROM orders o JOIN countries c ON true FOR UPDATE OF o",
    "SELECT * FROM orders WHERE customer_id IN (SELECT 1 FROM countries) FOR UPDATE",
    "WITH x AS (SELECT * FROM countries) SELECT * FROM x, orders FOR UPDATE",
    "SELECT * FROM orders, (SELECT * FROM countries) s FOR UPDATE OF orders",
    "SELECT * FROM countries",
]


@pytest.mark.parametrize("sql", LOCKS_REFUSED)
def test_row_locks_need_the_update_grant(sql):
    result = rewrite(sql, context())
    assert isinstance(result, Deny), result
    assert "refused" in result.message and result.hint, result


@pytest.mark.parametrize("sql", LOCKS_ALLOWED)
def test_row_locks_on_tables_one_may_update_are_allowed(sql):
    assert isinstance(rewrite(sql, context()), (Allow, Rewrite))


def test_locks_names_the_tables_postgresql_locks():
    def locked(sql):
        return sorted(rv["relname"] for rv in locks(statements(sql)[0][1]))

    assert locked("select 1 from a, b for update") == ["a", "b"]
    assert locked("select 1 from a x join b y on true for update of y") == ["b"]
    assert locked("select 1 from a, (select * from b join c on true) s for share of s") == ["b", "c"]
    assert locked("select 1 from a where exists (select 1 from b) for update") == ["a"]
    assert locked("select 1 from a, lateral generate_series(1, 2) g for update") == ["a"]
    assert locked("select 1 from a") == []
    assert locked("(select 1 from a) union (select 1 from b) for update") == ["a", "b"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM pg_stat_user_tables",
        "SELECT * FROM pg_catalog.pg_stat_all_tables",
        "SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = 'orders'",
        "SELECT * FROM pg_statio_user_tables",
        "SELECT * FROM PG_STAT_DATABASE",
        'SELECT * FROM "pg_stat_progress_copy"',
        "SELECT * FROM pg_stats",
        "SELECT * FROM pg_statistic",
        "SELECT * FROM pg_statistic_ext_data",
        "SELECT pg_stat_get_live_tuples('customers'::regclass)",
        "SELECT pg_catalog.pg_stat_get_xact_tuples_inserted(1)",
        "SELECT pg_relation_size('customers')",
        "SELECT pg_total_relation_size('orders')",
        "SELECT pg_table_size('orders')",
        "SELECT pg_indexes_size('orders')",
        "SELECT pg_database_size(current_database())",
        "SELECT pg_size_pretty(pg_table_size('orders'))",
        "SELECT pg_stat_clear_snapshot()",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_stat_user_tables)",
        "WITH s AS (SELECT * FROM pg_stat_user_indexes) SELECT 1",
    ],
)
def test_statistics_and_sizes_are_refused(sql):
    result = rewrite(sql, context())
    assert isinstance(result, Deny) and ("statistics" in result.message or "stats" in result.message), result


def test_schema_metadata_stays_readable():
    for sql in (
        "SELECT relname, reltuples FROM pg_class",
        "SELECT * FROM pg_attribute",
        "SELECT * FROM pg_statistic_ext",
        "SELECT pg_column_size(name) FROM customers",
        "SELECT pg_size_pretty(1024::bigint)",
    ):
        assert isinstance(rewrite(sql, context()), (Allow, Rewrite)), sql


def test_statistics_names():
    assert statistics_relation("pg_catalog.pg_stat_wal") and statistics_relation("ext.pg_stat_statements_info")
    assert not statistics_relation("pg_catalog.pg_statistic_ext") and not statistics_relation("public.stats")
    assert statistics_function("pg_stat_file") and not statistics_function("pg_statistics_obj_is_visible")
