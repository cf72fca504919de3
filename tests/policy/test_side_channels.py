"""EXPLAIN, NOTIFY, row locks and statistics through the real proxy and PostgreSQL (both pooling modes).

Each reveals or disturbs other tenants without reading their rows: EXPLAIN ANALYZE counts the
rows the tenant filter removes, NOTIFY reaches any listener, FOR UPDATE/SHARE on a shared table
blocks everybody's writers, statistics views and size functions count every tenant's rows.
Each is refused (42501, a hint) and the connection stays usable; NOTIFY is sent to the tenant's
own channel instead (rewriter/channels.py).
"""

from __future__ import annotations

import threading
import time

import asyncpg
import psycopg
import pytest

from tests.harness import PG_PORT
from tests.policy.conftest import DB, connect

DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={DB}"

EXPLAINS = [  # {t}: a table the user may read (customers for acme_app, the shared countries for alice)
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM {t}",
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM {t} WHERE name = 'Gus'",
    "EXPLAIN ANALYZE SELECT name FROM {t} WHERE name BETWEEN 'A' AND 'Z'",
    "explain analyse select * from {t}",
    "EXPLAIN (ANALYZE true) SELECT * FROM {t}",
    "EXPLAIN (ANALYZE on) SELECT * FROM {t}",
    "EXPLAIN (analyse 1) SELECT * FROM {t}",
    "EXPLAIN (ANALYZE) INSERT INTO {t} (name) VALUES ('x') ON CONFLICT DO NOTHING",
    "EXPLAIN SELECT * FROM {t} WHERE name = 'Gus'",
    "EXPLAIN (COSTS OFF) SELECT * FROM {t}",
    "EXPLAIN (ANALYZE off) SELECT * FROM {t}",
    "select 1; explain analyze select * from {t}",
]


def _refused(conn, sql, sqlstate="42501", **kw) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, **kw)
    assert info.value.diag.sqlstate == sqlstate, (sql, info.value.diag.message_primary)
    assert info.value.diag.message_hint, "a refusal says what to change"
    return info.value


def _usable(conn) -> None:
    assert conn.execute("select count(*) from countries").fetchone() == (2,)


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("user", ["acme_app", "alice"])
def test_explain_is_refused(guarded, user, prepare):
    with connect(guarded, user) as conn:
        for sql in (e.format(t="customers" if user == "acme_app" else "countries") for e in EXPLAINS):
            if prepare and ";" in sql:
                continue  # the extended protocol takes one statement
            err = _refused(conn, sql, prepare=prepare)
            assert "Removed" not in str(err)
            assert "EXPLAIN" in err.diag.message_primary or "no insert grant" in err.diag.message_primary, sql
        _usable(conn)


def test_notify_reaches_no_raw_listener(guarded):
    """A policed NOTIFY goes to its tenant's channel (rewriter/channels.py); what cannot be scoped is refused."""
    listener = psycopg.connect(DIRECT, autocommit=True)
    try:
        listener.execute("LISTEN globex_jobs")
        with connect(guarded, "acme_app") as conn:
            for sql in [
                'NOTIFY globex_jobs, \'{"tenant": "globex", "action": "refund"}\'',
                "notify globex_jobs",
                'NOTIFY "globex_jobs"',
                "NoTiFy/**/globex_jobs",
                "select pg_notify('globex_jobs', 'x')",
            ]:
                conn.execute(sql)
            conn.execute("NOTIFY globex_jobs", prepare=True)
            with conn.transaction():
                conn.execute("notify globex_jobs, 'in a transaction'")
            for sql in [
                "select 1; notify globex_jobs",
                "PREPARE n AS NOTIFY globex_jobs",
                "select pg_notify(current_user, 'x')",
            ]:
                _refused(conn, sql)
            _usable(conn)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    finally:
        listener.close()


LOCKS = [
    "SELECT code FROM countries WHERE code = 'us' FOR UPDATE",
    "select code from countries where code = 'us' for no key update",
    "SELECT code FROM countries WHERE code = 'us' FOR SHARE",
    "SELECT code FROM countries WHERE code = 'us' FOR KEY SHARE NOWAIT",
    "SELECT c.code FROM countries c JOIN orders o ON true WHERE c.code = 'us' FOR UPDATE",
    "SELECT 1 FROM orders o, countries c WHERE c.code = 'us' FOR UPDATE OF o FOR SHARE OF c",
    "SELECT * FROM (SELECT * FROM countries WHERE code = 'us') s FOR UPDATE",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM countries WHERE code = 'us' FOR UPDATE)",
    "WITH x AS (SELECT * FROM countries WHERE code = 'us' FOR UPDATE) SELECT * FROM x",
    "DECLARE c CURSOR FOR SELECT * FROM countries WHERE code = 'us' FOR UPDATE",
    "LOCK TABLE countries",
    "LOCK countries IN ROW SHARE MODE",
    "SELECT * FROM pg_catalog.pg_class WHERE relname = 'countries' FOR UPDATE",
]


def _admin_update_runs() -> float:
    """Seconds the admin's UPDATE of the shared row took (fails if a lock held it past 2 s)."""
    with psycopg.connect(DIRECT, autocommit=True) as admin:
        admin.execute("SET lock_timeout = '2s'")
        started = time.perf_counter()
        admin.execute("UPDATE countries SET name = name WHERE code = 'us'")
        return time.perf_counter() - started


@pytest.mark.parametrize("user", ["alice", "acme_app"])
def test_row_locks_on_a_table_without_the_update_grant_are_refused(guarded, user):
    with connect(guarded, user) as conn:
        for sql in LOCKS:
            conn.execute("BEGIN")
            err = _refused(conn, sql)
            assert "lock" in err.diag.message_primary or "no tenant" in err.diag.message_primary, sql
            _refused(conn, sql, prepare=True)  # extended protocol: refused at Parse
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")
            assert conn.execute("SELECT count(*) FROM countries").fetchone() == (2,)
            assert _admin_update_runs() < 1.5
            conn.execute("ROLLBACK")
        if user == "alice":  # select-only on customers and orders too
            conn.execute("BEGIN")
            _refused(conn, "SELECT id FROM orders FOR UPDATE")
            conn.execute("ROLLBACK")


def test_row_locks_stay_allowed_with_the_update_grant(guarded):
    with connect(guarded, "acme_app") as conn, conn.transaction():
        assert len(conn.execute("SELECT id FROM customers FOR UPDATE").fetchall()) == 2
        assert (
            len(
                conn.execute(
                    "SELECT o.id FROM orders o JOIN countries c ON true FOR UPDATE OF o", prepare=True
                ).fetchall()
            )
            == 4
        )


@pytest.fixture(scope="module")
def catalog_statistics(shop_db):
    """The statistics relations and functions of the live PostgreSQL, by class (not a hand-kept list)."""
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgw_ext")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA pgw_ext")
        relations = [
            r
            for (r,) in conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND c.relname LIKE '%stat%' "
                "AND n.nspname IN ('pg_catalog', 'information_schema', 'pgw_ext') ORDER BY 1"
            )
        ]
        functions = [
            f
            for (f,) in conn.execute(
                "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace "
                "AND (proname LIKE '%stat%' OR proname LIKE '%size%') ORDER BY 1"
            )
        ]
    yield relations, functions
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute("DROP SCHEMA pgw_ext CASCADE")


# Named like statistics, but schema metadata, this session's own, or refused for another reason.
READABLE_RELATIONS = {"pg_catalog.pg_statistic_ext"}
# refused as other sessions' state on a shared backend, or as PostgreSQL itself hides them
OTHER_REFUSALS = {"pg_catalog.pg_replication_origin_status", "pg_catalog.pg_prepared_statements"}
READABLE_FUNCTIONS = {
    "booland_statefunc",
    "boolor_statefunc",
    "pg_column_size",
    "pg_size_bytes",
    "pg_size_pretty",
    "pg_get_statisticsobjdef",
    "pg_get_statisticsobjdef_columns",
    "pg_get_statisticsobjdef_expressions",
    "pg_statistics_obj_is_visible",
    "statement_timestamp",
    "pg_prepared_statement",
    "pg_xact_status",
    "txid_status",
    "pg_get_wal_replay_pause_state",
    "pg_lock_status",
    "pg_ls_archive_statusdir",
    "pg_show_replication_origin_status",
    "ts_stat",
}


def test_every_statistics_relation_and_function_of_the_live_catalog_is_refused(guarded, catalog_statistics):
    relations, functions = catalog_statistics
    assert "pg_catalog.pg_stat_xact_user_tables" in relations and "pgw_ext.pg_stat_statements" in relations
    assert "pg_stat_get_xact_tuples_inserted" in functions and "pg_total_relation_size" in functions
    with connect(guarded, "acme_app") as conn:
        for name in relations:
            if name in READABLE_RELATIONS:
                conn.execute(f"SELECT count(*) FROM {name}")
                continue
            err = _refused(conn, f"SELECT * FROM {name}")
            if name not in OTHER_REFUSALS and not name.startswith("pgw_ext."):
                assert "statistics" in err.diag.message_primary, name
            short = name.partition(".")[2]
            if name.startswith("pg_catalog."):
                _refused(conn, f'SELECT 1 FROM "{short}" s WHERE EXISTS (SELECT 1)')
        for name in functions:
            if name in READABLE_FUNCTIONS:
                continue  # computes on its arguments, or refused as dangerous by other tests
            for call in (f"SELECT {name}()", f"SELECT pg_catalog.{name}(1)", f"SELECT \"{name}\"('customers')"):
                err = _refused(conn, call)
                assert "statistics or sizes" in err.diag.message_primary, call
        conn.execute("SELECT relname, reltuples FROM pg_class WHERE relname = 'customers'")  # metadata stays
        _usable(conn)


@pytest.mark.parametrize("user", ["acme_app", "globex_app"])
def test_the_previous_clients_pending_counts_are_not_readable(guarded, user):
    """In transaction pooling a backend's not-yet-reported counts were visible to the next client."""
    with connect(guarded, "globex_app") as g:
        g.execute("UPDATE orders SET total = total WHERE id = 12")
    with connect(guarded, user) as conn:
        for sql in (
            "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'orders'",
            "SELECT pg_stat_get_xact_tuples_updated('orders'::regclass)",
        ):
            _refused(conn, sql)
            _refused(conn, sql, prepare=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)


DEEP = {
    "arrays": lambda n: "SELECT " + "ARRAY[" * n + "1" + "]" * n,
    "parentheses": lambda n: "SELECT " + "(" * n + "id" + " + 1)" * n + " FROM customers",
    "subqueries": lambda n: "SELECT " + "(SELECT " * n + "1" + ")" * n,
    "case": lambda n: "SELECT " + "CASE WHEN true THEN " * n + "name" + " END" * n + " FROM customers",
    "function-calls": lambda n: "SELECT " + "lower(" * n + "name" + ")" * n + " FROM customers",
    "boolean-chain": lambda n: "SELECT 1 FROM customers WHERE " + "(id = 1 OR (id = 2 AND " * n + "true" + "))" * n,
    "not-chain": lambda n: "SELECT id FROM customers WHERE " + "NOT " * n + "true",
}


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_deep_statements_are_refused_and_the_connection_stays(guarded, prepare):
    with connect(guarded, "acme_app") as conn:
        for shape, make in DEEP.items():
            for depth in (500, 3000, 20000):
                err = _refused(conn, make(depth), "54001", prepare=prepare)
                assert "too complex" in err.diag.message_primary, shape
            _usable(conn)
        assert conn.execute(DEEP["arrays"](5) + " AS a").fetchone()[0] == [[[[[1]]]]]


def test_deep_statements_through_asyncpg(guarded):
    async def run():
        conn = await asyncpg.connect(host=guarded.host, port=guarded.port, user="acme_app", database=DB, ssl=False)
        try:
            for make in DEEP.values():
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.fetch(make(500))
                assert info.value.sqlstate == "54001"
            assert await conn.fetchval("select count(*) from customers") == 2
        finally:
            await conn.close()

    import asyncio

    asyncio.run(run())


def test_a_huge_statement_is_refused_without_stalling_other_clients(guarded):
    """20,000 ORed terms (220,000 parse nodes) used to hold the event loop for seconds."""
    sql = "SELECT 1 FROM customers WHERE " + " OR ".join(f"name = 'y{i}'" for i in range(20000))
    outcome = {}

    def big():
        with connect(guarded, "acme_app") as conn:
            started = time.perf_counter()
            try:
                conn.execute(sql + f" /* {time.time()} */")
            except psycopg.Error as exc:
                outcome["sqlstate"] = exc.diag.sqlstate
            outcome["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=big)
    thread.start()
    waits = []
    with connect(guarded, "globex_app") as other:
        while thread.is_alive():
            started = time.perf_counter()
            other.execute("SELECT 1")
            waits.append(time.perf_counter() - started)
    thread.join()
    assert outcome["sqlstate"] == "54001"
    assert outcome["seconds"] < 3 and max(waits, default=0) < 1.5, (outcome, max(waits, default=0))


CROSS_TENANT_CALLS = [
    "SELECT pg_advisory_lock(777)",
    "SELECT pg_try_advisory_xact_lock(777)",
    "select pg_try_advisory_lock(1, 2)",
    "SELECT pg_catalog.pg_advisory_xact_lock_shared(777)",
    'SELECT "pg_try_advisory_lock_shared"(777)',
    "SELECT pg_advisory_unlock(777)",
    "SELECT pg_advisory_unlock_all()",
    "SELECT id FROM customers WHERE pg_try_advisory_xact_lock(id)",
    "SELECT (777::bigint).pg_try_advisory_lock",
    "SELECT currtid2('customers', '(0,1)')",
    "SELECT pg_catalog.currtid2('orders'::text, '(0,3)'::tid)",
    "SELECT setseed(0.5)",
    "SELECT pg_catalog.setseed(0.5), random()",
    "SELECT 1 FROM countries WHERE setseed(0) IS NULL",
    "SELECT (0.5).setseed",
]


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("user", ["acme_app", "alice"])
def test_calls_whose_effect_crosses_tenants_are_refused(guarded, user, prepare):
    """Advisory locks (one key space per database), currtid2() (any row's update chain) and
    setseed() (random()'s state stays with the pooled backend) are refused to policed sessions."""
    with connect(guarded, user) as conn:
        for sql in CROSS_TENANT_CALLS:
            err = _refused(conn, sql, prepare=prepare)
            assert any(w in err.diag.message_primary for w in ("advisory", "currtid2", "setseed")), sql
        _usable(conn)
    with psycopg.connect(DIRECT, autocommit=True) as pg:  # no lock of theirs was taken
        assert pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_a_bypass_role_keeps_advisory_locks(guarded):
    with connect(guarded, "postgres") as conn:
        assert conn.execute("SELECT pg_try_advisory_xact_lock(777)").fetchone() == (True,)
        assert conn.execute("SELECT setseed(0.5)").fetchone() == ("",)
