"""psycopg 3 through pgwarden: prepared statements, binary, pipeline, COPY, NOTIFY, cancel, SET tracking."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors

from tests.clients.support import connect, skip_if_direct, unique

pytestmark = pytest.mark.timeout(60)

CHANNEL = unique("pgw_channel")


def test_simple_queries_and_parameters(proxy):
    with connect(proxy, autocommit=True) as conn:
        assert conn.execute("SELECT 1, 'two', 3.5::numeric, NULL").fetchone() == (1, "two", Decimal("3.5"), None)
        rows = conn.execute("SELECT g, g * %s FROM generate_series(1, %s) g", (10, 1000)).fetchall()
        assert len(rows) == 1000 and rows[999] == (1000, 10000)
        assert conn.execute("SELECT %s::text || %s", ("é", "✓")).fetchone() == ("é✓",)
        assert conn.info.parameter_status("server_encoding") == "UTF8"
        assert conn.info.parameter_status("integer_datetimes") == "on"
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM pgw_psycopg_no_such_table")
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


@pytest.mark.skipif(psycopg.pq.version() < 180000, reason="max_protocol_version needs libpq 18")
def test_protocol_version_negotiation(proxy):
    """libpq 18 asking for protocol 3.2 is answered with 3.0, as PostgreSQL 15 does, and everything works."""
    with psycopg.connect(proxy.dsn(connect_timeout=10, max_protocol_version="3.2"), autocommit=True) as conn:
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)


def test_notices_and_error_fields(proxy, items):
    with connect(proxy, autocommit=True) as conn:
        notices: list[tuple[str, str]] = []
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'first %', 1; RAISE WARNING 'second'; END $$")
        assert notices == [("NOTICE", "first 1"), ("WARNING", "second")]

        conn.execute(f"INSERT INTO {items} (id, name) VALUES (1, 'one')")
        with pytest.raises(errors.UniqueViolation) as exc:
            conn.execute(f"INSERT INTO {items} (id, name) VALUES (%s, %s)", (1, "again"))
        diag = exc.value.diag
        assert (diag.sqlstate, diag.table_name, diag.constraint_name) == ("23505", items, f"{items}_pkey")
        assert diag.message_detail == "Key (id)=(1) already exists."
        with pytest.raises(errors.SyntaxError) as exc:
            conn.execute("SELECT 1 FROM WHERE")
        assert exc.value.diag.statement_position == "15"
        with pytest.raises(errors.RaiseException) as exc:
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'custom' USING DETAIL = 'why', HINT = 'fix it'; END $$")
        assert (exc.value.diag.message_primary, exc.value.diag.message_detail, exc.value.diag.message_hint) == (
            "custom",
            "why",
            "fix it",
        )


def test_transactions_commit_and_rollback(proxy, items):
    with connect(proxy) as writer, connect(proxy, autocommit=True) as reader:
        writer.execute(f"INSERT INTO {items} (id, name) VALUES (1, 'kept')")
        # Not committed yet: invisible elsewhere.
        assert reader.execute(f"SELECT count(*) FROM {items}").fetchone() == (0,)
        writer.commit()
        assert reader.execute(f"SELECT name FROM {items}").fetchall() == [("kept",)]

        writer.execute(f"INSERT INTO {items} (id, name) VALUES (2, 'dropped')")
        writer.execute(f"UPDATE {items} SET name = 'changed' WHERE id = 1")
        writer.rollback()
        assert reader.execute(f"SELECT id, name FROM {items}").fetchall() == [(1, "kept")]

        # An error aborts the transaction until rollback; the connection then works again.
        with pytest.raises(errors.UniqueViolation):
            writer.execute(f"INSERT INTO {items} (id, name) VALUES (1, 'duplicate')")
        with pytest.raises(errors.InFailedSqlTransaction):
            writer.execute("SELECT 1")
        writer.rollback()
        with writer.transaction():
            writer.execute(f"INSERT INTO {items} (id, name) VALUES (3, 'block')")
            with pytest.raises(errors.DivisionByZero), writer.transaction():  # a savepoint
                writer.execute(f"INSERT INTO {items} (id, name) VALUES (4, 'savepoint')")
                writer.execute("SELECT 1/0")
        assert reader.execute(f"SELECT id FROM {items} ORDER BY id").fetchall() == [(1,), (3,)]


def test_implicit_transactions_are_atomic(proxy, items):
    with connect(proxy, autocommit=True) as conn:
        # executemany in autocommit: one implicit transaction for the batch.
        with pytest.raises(errors.UniqueViolation):
            conn.cursor().executemany(f"INSERT INTO {items} (id, name) VALUES (%s, 'x')", [(1,), (2,), (1,), (3,)])
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (0,)
        # A multi-statement simple query is one implicit transaction too.
        with pytest.raises(errors.UniqueViolation):
            psycopg.ClientCursor(conn).execute(
                f"INSERT INTO {items} (id, name) VALUES (10, 'a'); INSERT INTO {items} (id, name) VALUES (10, 'b');"
                f" INSERT INTO {items} (id, name) VALUES (11, 'c')"
            )
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (0,)
        # A BEGIN inside a multi-statement string leaves the transaction open: the backend stays with us.
        psycopg.ClientCursor(conn).execute(f"BEGIN; INSERT INTO {items} (id, name) VALUES (20, 'open')")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (1,)
        conn.execute("ROLLBACK")
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (0,)


def test_server_side_prepared_explicit(proxy, items):
    with connect(proxy, autocommit=True) as conn:
        for i in range(20):
            conn.execute(
                f"INSERT INTO {items} (id, name, price) VALUES (%s, %s, %s)", (i, f"n{i}", Decimal(i) / 4), prepare=True
            )
        rows = [
            conn.execute(f"SELECT name, price FROM {items} WHERE id = %s", (i,), prepare=True).fetchone()
            for i in range(20)
        ]
        assert rows == [(f"n{i}", Decimal(i) / 4) for i in range(20)]


QUERIES = [
    ("SELECT %s::int + 1, 'q0'", lambda i: (i + 1, "q0")),
    ("SELECT %s::int * 2, 'q1'", lambda i: (i * 2, "q1")),
    ("SELECT (%s::int)::text || '!', 'q2'", lambda i: (f"{i}!", "q2")),
]


def _prepared_worker(proxy, worker: int) -> list[str]:
    """Each connection runs the queries in its own order, so `_pg3_0` means different text on each."""
    problems = []
    order = QUERIES[worker % 3 :] + QUERIES[: worker % 3]
    with connect(proxy, autocommit=worker % 2 == 0) as conn:
        for round_ in range(8):  # > prepare_threshold (5): psycopg switches to named statements
            for sql, expected in order:
                value = worker * 100 + round_
                got = conn.execute(sql, (value,)).fetchone()
                if got != expected(value):
                    problems.append(f"worker {worker}: {sql!r} with {value} gave {got}")
            if not conn.autocommit:
                conn.commit()
    return problems


def test_default_prepare_threshold_across_many_connections(proxy):
    """Where PgBouncer breaks in transaction mode: same statement names, different texts, shared backends."""
    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(lambda w: _prepared_worker(proxy, w), range(30)))
    assert [p for r in results for p in r] == []


def _evicting_worker(proxy, worker: int) -> list:
    """prepared_max=3 with 8 statements: psycopg closes (protocol Close) and re-prepares names all along."""
    wrong = []
    with connect(proxy, autocommit=worker % 2 == 0, prepare_threshold=0) as conn:
        conn.prepared_max = 3
        for round_ in range(3):
            for q in range(8):
                got = conn.execute(f"SELECT %s::int + {q}", (worker,)).fetchone()[0]
                if got != worker + q:
                    wrong.append((worker, round_, q, got))
            if not conn.autocommit:
                conn.commit()
    return wrong


def test_prepared_statement_cache_eviction(proxy):
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda w: _evicting_worker(proxy, w), range(12)))
    assert [w for r in results for w in r] == []


def test_binary_results(proxy, items):
    at = dt.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=dt.UTC)
    with connect(proxy, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {items} VALUES (%b, %b, %b, %b, %b, %b)",
            (7, "binary ✓", Decimal("12.34"), ["a", "b,c", None], b"\x00\xff\x10", at),
        )
        with conn.cursor(binary=True) as cur:
            cur.execute(f"SELECT id, name, price, tags, data, at FROM {items} WHERE id = %s", (7,))
            assert cur.pgresult.fformat(0) == 1  # the backend really answered in binary
            assert cur.fetchone() == (7, "binary ✓", Decimal("12.34"), ["a", "b,c", None], b"\x00\xff\x10", at)
        got = conn.execute("SELECT %s::int8, %s::float8, %s::bool", (2**40, 0.5, True), binary=True).fetchone()
        assert got == (2**40, 0.5, True)


def test_pipeline_mode(proxy, items):
    with connect(proxy) as conn:
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(10):
                cur.execute(f"INSERT INTO {items} (id, name) VALUES (%s, %s)", (i, f"p{i}"))
            c1 = conn.execute(f"SELECT count(*) FROM {items}")
            c2 = conn.execute(f"UPDATE {items} SET name = upper(name) WHERE id < %s RETURNING id", (3,))
            c3 = conn.execute("SELECT %s::int * 2", (21,))
        assert c1.fetchone() == (10,)
        assert sorted(c2.fetchall()) == [(0,), (1,), (2,)]
        assert c3.fetchone() == (42,)
        conn.commit()

        # An error inside a pipeline aborts what follows up to the next sync, and nothing more.
        with pytest.raises(errors.UniqueViolation), conn.pipeline():
            conn.execute(f"INSERT INTO {items} (id, name) VALUES (100, 'x')")
            conn.execute(f"INSERT INTO {items} (id, name) VALUES (0, 'duplicate')")
            conn.execute(f"INSERT INTO {items} (id, name) VALUES (101, 'y')")
        conn.rollback()
        with conn.pipeline():
            names = conn.execute(f"SELECT string_agg(name, ',' ORDER BY id) FROM {items}")
        assert names.fetchone() == ("P0,P1,P2,p3,p4,p5,p6,p7,p8,p9",)


def _pipeline_worker(proxy, n: int) -> list:
    """Autocommit pipelines with a sync point in the middle (the backend may change there) and executemany."""
    wrong = []
    with connect(proxy, autocommit=True) as conn:
        for round_ in range(4):
            with conn.pipeline() as pipeline:
                curs = [conn.execute("SELECT %s::int + %s::int", (n, i), prepare=i % 2 == 0) for i in range(20)]
                pipeline.sync()
                curs += [conn.execute("SELECT %s::text || 'x'", (str(i),)) for i in range(10)]
            got = [cur.fetchone()[0] for cur in curs]
            if got != [n + i for i in range(20)] + [f"{i}x" for i in range(10)]:
                wrong.append((n, round_, got))
        cur = conn.cursor()
        cur.executemany("SELECT %s::int * 2", [(i,) for i in range(50)], returning=True)
        results = [cur.fetchone()[0]]
        while cur.nextset():
            results.append(cur.fetchone()[0])
        if results != [i * 2 for i in range(50)]:
            wrong.append((n, "executemany", results))
    return wrong


def test_autocommit_pipelines_and_executemany_many_clients(proxy):
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda n: _pipeline_worker(proxy, n), range(20)))
    assert [w for r in results for w in r] == []


def test_copy_in_and_out(proxy, items):
    rows = [(i, f"row {i}\twith tab", Decimal(i) / 100, [f"t{i}", "x"], bytes([i % 256, 0]), None) for i in range(5000)]
    with connect(proxy) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {items} (id, name, price, tags, data, at) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == 5000
        conn.commit()
        with conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT id, name, price, tags, data, at FROM {items} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "numeric", "text[]", "bytea", "timestamptz"])
                assert list(copy.rows()) == rows
            # Binary COPY both ways.
            query = f"SELECT id, name FROM {items} WHERE id < 3 ORDER BY id"
            with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                assert list(copy.rows()) == [(0, "row 0\twith tab"), (1, "row 1\twith tab"), (2, "row 2\twith tab")]
            cur.execute(f"DELETE FROM {items}")
            with cur.copy(f"COPY {items} (id, name) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                copy.write_row((1, "binary"))
        conn.commit()
        assert conn.execute(f"SELECT id, name FROM {items}").fetchall() == [(1, "binary")]
        # A failing COPY FROM leaves nothing behind and the connection usable.
        with pytest.raises(errors.UniqueViolation):
            with conn.cursor().copy(f"COPY {items} (id, name) FROM STDIN") as copy:
                copy.write_row((2, "fine"))
                copy.write_row((1, "duplicate"))
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (1,)
        conn.commit()
        # The client gives up in the middle (CopyFail), in autocommit this time.
        conn.autocommit = True
        with pytest.raises(RuntimeError), conn.cursor().copy(f"COPY {items} (id, name) FROM STDIN") as copy:
            copy.write_row((3, "abandoned"))
            raise RuntimeError("client gives up")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone() == (1,)


def test_listen_notify(proxy):
    with connect(proxy, autocommit=True) as listener, connect(proxy, autocommit=True) as sender:
        listener.execute(f"LISTEN {CHANNEL}")
        sender.execute(f"NOTIFY {CHANNEL}, 'hello'")
        sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "second ✓"))
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
        assert got == [(CHANNEL, "hello"), (CHANNEL, "second ✓")]
        listener.execute(f"UNLISTEN {CHANNEL}")
        sender.execute(f"NOTIFY {CHANNEL}, 'unheard'")
        assert list(listener.notifies(timeout=0.5)) == []


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel(proxy, method):
    with connect(proxy) as conn:
        timer = threading.Timer(0.5, getattr(conn, method))
        timer.start()
        start = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as exc:
            conn.execute("SELECT pg_sleep(10)")
        timer.join()
        assert time.monotonic() - start < 5
        assert exc.value.sqlstate == "57014"
        conn.rollback()
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
        conn.commit()
    # A cancel that arrives when nothing runs must not hit a later query.
    with connect(proxy, autocommit=True) as conn:
        getattr(conn, method)()
        time.sleep(0.2)
        assert conn.execute("SELECT pg_sleep(0.3)::text, 'not cancelled'").fetchone() == ("", "not cancelled")


def _set_worker(proxy, worker: int) -> tuple[list[str], set[int]]:
    """SET session state once, then check it in many short transactions interleaved with other clients."""
    problems, pids = [], set()
    zone = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris"][worker % 4]
    name = f"pgw-client-{worker}"
    with connect(proxy, autocommit=worker % 2 == 0) as conn:
        conn.execute(f"SET application_name = '{name}'")
        conn.execute(f"SET TimeZone = '{zone}'")
        if not conn.autocommit:
            conn.commit()
        for _ in range(15):
            row = conn.execute(
                "SELECT current_setting('application_name'), current_setting('TimeZone'),"
                " pg_backend_pid(), pg_sleep(0.005)"
            ).fetchone()
            if row[:2] != (name, zone):
                problems.append(f"worker {worker} expected {(name, zone)}, saw {row[:2]}")
            if conn.info.parameter_status("application_name") != name:
                problems.append(
                    f"worker {worker}: ParameterStatus application_name is "
                    f"{conn.info.parameter_status('application_name')!r}"
                )
            pids.add(row[2])
            if not conn.autocommit:
                conn.commit()
    return problems, pids


def test_set_survives_transaction_pooling(tx_proxy):
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda w: _set_worker(tx_proxy, w), range(25)))
    assert [p for problems, _ in results for p in problems] == []
    skip_if_direct(tx_proxy)
    # 25 clients on 10 backends: clients really moved between backends, so the SETs were re-applied.
    assert any(len(pids) > 1 for _, pids in results)
    assert len(set().union(*(pids for _, pids in results))) <= 10


def test_cancel_under_load(tx_proxy):
    """With every backend busy and shared, each cancel stops its own query at once and nothing else."""
    stop = threading.Event()

    def busy(_: int) -> tuple[int, list[str]]:
        done, failures = 0, []
        with connect(tx_proxy, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute("SELECT pg_sleep(0.01)")
                    done += 1
                except psycopg.Error as exc:
                    failures.append(repr(exc))
        return done, failures

    with ThreadPoolExecutor(max_workers=12) as pool:
        workers = [pool.submit(busy, i) for i in range(12)]
        try:
            with connect(tx_proxy) as conn:
                for _ in range(4):
                    conn.execute("SELECT 1")
                    conn.commit()
                    timer = threading.Timer(0.3, conn.cancel)
                    timer.start()
                    start = time.monotonic()
                    with pytest.raises(errors.QueryCanceled):
                        conn.execute("SELECT pg_sleep(5)")
                    assert time.monotonic() - start < 2
                    conn.rollback()
        finally:
            stop.set()
        results = [w.result() for w in workers]
    assert [f for _, failures in results for f in failures] == []
    assert all(done > 0 for done, _ in results)


def test_large_values_and_results(proxy):
    big = "x" * 5_000_000 + "✓"
    with connect(proxy, autocommit=True) as conn:
        assert conn.execute("SELECT length(%s::text), md5(%s::text)", (big, big)).fetchone() == (
            len(big),
            hashlib.md5(big.encode()).hexdigest(),
        )
        assert conn.execute("SELECT %s::text", (big,)).fetchone()[0] == big
        rows = conn.execute("SELECT g, repeat('y', 100) FROM generate_series(1, 200000) g").fetchall()
        assert len(rows) == 200_000 and rows[-1] == (200_000, "y" * 100)


def test_server_side_cursor(proxy, items):
    with connect(proxy) as conn:
        conn.execute(f"INSERT INTO {items} (id, name) SELECT g, 'n' || g FROM generate_series(1, 1000) g")
        conn.commit()
        with conn.cursor(name="pgw_cursor") as cur:  # DECLARE ... CURSOR inside a transaction
            cur.itersize = 100
            cur.execute(f"SELECT id, name FROM {items} ORDER BY id")
            first = cur.fetchmany(10)
            rest = list(cur)
        assert first[0] == (1, "n1") and len(first) + len(rest) == 1000 and rest[-1] == (1000, "n1000")
        conn.commit()
