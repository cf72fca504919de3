"""psycopg 3 through pgwarden: what pooling must keep per client (session state, statement names) and never leak."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors

from tests.clients.support import (
    DirectPostgres,
    connect,
    direct_execute,
    pool_mode,
    scratch_database,
    skip_if_direct,
    unique,
)

pytestmark = pytest.mark.timeout(60)

ROLE = unique("pgw_probe_role")


@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_statements_survive_deallocate_all(fresh_proxy, reset):
    query = f"SELECT %s::int + {len(reset)}, 'deallocate test'"
    with connect(fresh_proxy, autocommit=True, prepare_threshold=0) as conn:
        assert conn.execute(query, (1,)).fetchone()[0] == 1 + len(reset)
        conn.execute(reset)  # psycopg forgets its own statements and prepares them again
        for i in range(3):
            assert conn.execute(query, (i,)).fetchone()[0] == i + len(reset)

    def other(i: int) -> int:
        with connect(fresh_proxy, autocommit=True, prepare_threshold=0) as c:
            return c.execute(query, (i,)).fetchone()[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(other, range(12))) == [i + len(reset) for i in range(12)]


def test_new_clients_see_a_changed_table_shape(fresh_proxy, items, pg):
    """After ALTER TABLE, a client preparing a statement gets the new shape, not a plan an earlier client left."""
    query = f"SELECT * FROM {items} WHERE id = %s"
    pg.execute(f"INSERT INTO {items} (id, name) VALUES (1, 'one')")
    with connect(fresh_proxy, autocommit=True, prepare_threshold=0) as conn:
        assert conn.execute(query, (1,)).fetchone()[:2] == (1, "one")
    pg.execute(f"ALTER TABLE {items} ADD COLUMN added text DEFAULT 'new'")
    for _ in range(3):
        with connect(fresh_proxy, autocommit=True, prepare_threshold=0) as conn:
            cur = conn.execute(query, (1,))
            row = cur.fetchone()
            assert [c.name for c in cur.description][-1] == "added"
            assert row[:2] == (1, "one") and row[-1] == "new"


def test_sql_prepare(proxy):
    with connect(proxy, autocommit=True) as conn:
        if pool_mode(proxy) == "transaction" and not isinstance(proxy, DirectPostgres):
            # Its effect would outlive the transaction on a shared backend: refused, clearly.
            with pytest.raises(errors.FeatureNotSupported) as exc:
                conn.execute("PREPARE pgw_sql_prep (int) AS SELECT $1 * 2")
            assert "PREPARE" in exc.value.diag.message_primary
            assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
            return
        conn.execute("PREPARE pgw_sql_prep (int) AS SELECT $1 * 2")
        assert [conn.execute("EXECUTE pgw_sql_prep (%s)" % i).fetchone()[0] for i in range(3)] == [0, 2, 4]
        conn.execute("DEALLOCATE pgw_sql_prep")
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("EXECUTE pgw_sql_prep (1)")


def _unnamed_worker(proxy, worker: int) -> list:
    """libpq's PQprepare(conn, "", ...) then PQexecPrepared(conn, "", ...): two Sync cycles."""
    wrong = []
    with connect(proxy, autocommit=True) as conn:
        for k in range(10):
            prepared = conn.pgconn.prepare(b"", f"SELECT $1::int + {worker * 100}".encode())
            assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message
            result = conn.pgconn.exec_prepared(b"", [str(k).encode()])
            got = result.get_value(0, 0) if result.status == psycopg.pq.ExecStatus.TUPLES_OK else result.error_message
            if got != str(worker * 100 + k).encode():
                wrong.append((worker, k, got))
    return wrong


def test_unnamed_statement_prepared_then_executed(proxy):
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda w: _unnamed_worker(proxy, w), range(25)))
    assert [w for r in results for w in r] == []


def test_statement_names_are_private_to_their_client(proxy):
    """Another client's statement name is unknown here (26000), never a way to run its SQL."""
    with connect(proxy, autocommit=True) as owner, connect(proxy, autocommit=True) as other:
        assert owner.pgconn.prepare(b"pgw_private", b"SELECT 'owner only'").status == psycopg.pq.ExecStatus.COMMAND_OK
        for result in (other.pgconn.exec_prepared(b"pgw_private", []), other.pgconn.describe_prepared(b"pgw_private")):
            assert result.status == psycopg.pq.ExecStatus.FATAL_ERROR
            assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
        assert owner.pgconn.exec_prepared(b"pgw_private", []).get_value(0, 0) == b"owner only"
        assert other.execute("SELECT 'other still usable'").fetchone() == ("other still usable",)


def _encoding_worker(proxy, n: int) -> list:
    """A client with its own client_encoding; unprepared statements (the named ones are tested below)."""
    encoding = ["LATIN1", "UTF8", "WIN1252"][n % 3]
    wrong = []
    with psycopg.connect(
        proxy.dsn(connect_timeout=10, client_encoding=encoding), autocommit=True, prepare_threshold=None
    ) as conn:
        for _ in range(10):
            row = conn.execute(
                "SELECT 'café', %s::text, current_setting('client_encoding'), pg_sleep(0.01)::text", ("naïve",)
            ).fetchone()[:3]
            if row != ("café", "naïve", encoding):
                wrong.append((n, row))
    return wrong


def test_client_encodings_across_backends(proxy):
    with ThreadPoolExecutor(max_workers=21) as pool:
        results = list(pool.map(lambda n: _encoding_worker(proxy, n), range(21)))
    assert [w for r in results for w in r] == []


def test_named_statement_in_latin1(proxy):
    with psycopg.connect(proxy.dsn(connect_timeout=10, client_encoding="LATIN1"), autocommit=True) as conn:
        for _ in range(8):  # past prepare_threshold: psycopg switches to a named statement
            assert conn.execute("SELECT 'café', %s::text", ("naïve",)).fetchone() == ("café", "naïve")
        assert conn.execute("SELECT 'crème'", prepare=True).fetchone() == ("crème",)


def test_listen_is_refused_inside_a_savepoint(tx_proxy):
    """pgwarden applies a block's LISTEN at its COMMIT but cannot undo one at ROLLBACK TO: refused there,
    failing the block as an error would, with a hint about LISTEN (not another statement's)."""
    skip_if_direct(tx_proxy)
    with connect(tx_proxy) as conn:
        conn.execute("LISTEN pgw_channel")  # (in the block: answered, applied at the commit)
        conn.execute("SAVEPOINT s")
        with pytest.raises(errors.FeatureNotSupported) as exc:
            conn.execute("LISTEN pgw_channel")
        assert "LISTEN" in exc.value.diag.message_primary and "savepoint" in exc.value.diag.message_primary
        assert "SAVEPOINT" in exc.value.diag.message_hint and "PREPARE" not in exc.value.diag.message_hint
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def _set_config_worker(proxy, worker: int) -> list[str]:
    """TimeZone changed by set_config() (as Django does), by a multi-statement SET, or not at all."""
    zone = {0: "Asia/Tokyo", 1: "America/Lima", 2: "Etc/UTC"}[worker % 3]
    problems = []
    with connect(proxy, autocommit=True) as conn:
        if worker % 3 == 0:
            conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        elif worker % 3 == 1:
            psycopg.ClientCursor(conn).execute(f"SET TimeZone = '{zone}'; SELECT 1")  # simple query, two statements
        for _ in range(10):
            seen = conn.execute("SELECT current_setting('TimeZone'), pg_sleep(0.01)::text").fetchone()[0]
            if seen != zone:
                problems.append(f"worker {worker} expected {zone}, saw {seen}")
    return problems


def test_set_config_and_multi_statement_set_under_transaction_pooling(fresh_tx_proxy):
    with ThreadPoolExecutor(max_workers=21) as pool:
        results = list(pool.map(lambda w: _set_config_worker(fresh_tx_proxy, w), range(21)))
    assert [p for r in results for p in r] == []


@pytest.fixture
def probe_role():
    direct_execute(f"DROP ROLE IF EXISTS {ROLE}")
    direct_execute(f"CREATE ROLE {ROLE}")
    yield ROLE
    direct_execute(f"DROP ROLE IF EXISTS {ROLE}")


def _set_config_unreported_worker(proxy, setting: str, value: str, worker: int) -> list:
    """Even workers change `setting` with set_config(); odd ones never touch it."""
    wrong = []
    with connect(proxy, autocommit=True) as conn:
        default = conn.execute("SELECT current_setting(%s)", (setting,)).fetchone()[0]
        if worker % 2 == 0 and not _refused_or_done(conn, "SELECT set_config(%s, %s, false)", (setting, value)):
            return wrong
        for _ in range(10):
            seen = conn.execute("SELECT current_setting(%s), pg_sleep(0.01)::text", (setting,)).fetchone()[0]
            if seen != (value if worker % 2 == 0 else default):
                wrong.append((worker, seen))
    return wrong


@pytest.mark.parametrize(
    ("setting", "value"),
    [("search_path", "pgw_elsewhere, public"), ("statement_timeout", "1234ms"), ("work_mem", "7MB"), ("role", ROLE)],
)
def test_set_config_of_unreported_settings(fresh_proxy, probe_role, setting, value):
    """Settings PostgreSQL does not report in ParameterStatus, changed with set_config(): kept or refused."""
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda w: _set_config_unreported_worker(fresh_proxy, setting, value, w), range(20)))
    assert [w for r in results for w in r] == []


CHARACTERISTICS = [  # what a client runs, and what its transactions must then be
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", ("serializable", "off")),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", ("read committed", "on")),
    ("SET default_transaction_read_only = on", ("read committed", "on")),
    ("SET default_transaction_isolation = 'repeatable read'", ("repeatable read", "off")),
    (None, ("read committed", "off")),
]


def _characteristics_worker(proxy, n: int) -> list:
    statement, expected = CHARACTERISTICS[n % len(CHARACTERISTICS)]
    wrong = []
    with connect(proxy, autocommit=True) as conn:
        if statement:
            conn.execute(statement)
        for _ in range(8):
            with conn.transaction():
                seen = conn.execute(
                    "SELECT current_setting('transaction_isolation'),"
                    " current_setting('transaction_read_only'), pg_sleep(0.01)::text"
                ).fetchone()[:2]
            if seen != expected:
                wrong.append((statement, expected, seen))
    return wrong


def test_session_characteristics_under_pooling(fresh_proxy, request):
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda n: _characteristics_worker(fresh_proxy, n), range(20)))
    assert {w for r in results for w in r} == set()


def _busy_neighbours(proxy, stop: threading.Event) -> None:
    """Other clients keep the backends moving while one client is being checked."""
    with connect(proxy, autocommit=True) as conn:
        while not stop.is_set():
            conn.execute("SELECT pg_sleep(0.005)")


def test_set_in_rolled_back_transaction_and_set_local_do_not_stick(tx_proxy):
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=12) as pool, connect(tx_proxy) as conn:
        for _ in range(12):
            pool.submit(_busy_neighbours, tx_proxy, stop)
        try:
            conn.execute("SET application_name = 'committed'")
            conn.commit()
            conn.execute("SET application_name = 'rolled-back'")
            conn.rollback()
            conn.execute("SET LOCAL application_name = 'local'")
            assert conn.execute("SHOW application_name").fetchone() == ("local",)
            conn.commit()
            for _ in range(5):
                assert conn.execute("SHOW application_name").fetchone() == ("committed",)
                conn.commit()
        finally:
            stop.set()
        conn.execute("RESET application_name")
        conn.commit()
        assert conn.execute("SHOW application_name").fetchone() == ("",)


def _refused_or_done(conn: psycopg.Connection, sql: str, params: tuple = ()) -> bool:
    """Run `sql`; False if the proxy refused it (with a message, leaving the connection usable)."""
    try:
        conn.execute(sql, params)
        return True
    except psycopg.Error as exc:
        assert str(exc).strip()
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
        return False


def _probe_new_clients(proxy, sql: str) -> set[tuple]:
    """What more new clients than the pool has backends, all at once, see for `sql`."""

    def probe(_: int) -> tuple:
        with connect(proxy, autocommit=True) as conn:
            return conn.execute(f"SELECT {sql}, pg_sleep(0.05)::text").fetchone()[:-1]

    with ThreadPoolExecutor(max_workers=12) as pool:
        return set(pool.map(probe, range(12)))


def test_set_does_not_reach_the_next_clients(proxy):
    with connect(proxy, autocommit=True) as conn:
        conn.execute("SET pgw.flag = 'left-behind'")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
    # A placeholder setting reset by DISCARD/RESET reads as '' rather than NULL.
    seen = _probe_new_clients(proxy, "current_setting('pgw.flag', true), current_setting('TimeZone')")
    assert seen <= {(None, "Etc/UTC"), ("", "Etc/UTC")}


def test_temp_table_does_not_reach_the_next_clients(fresh_proxy):
    with connect(fresh_proxy, autocommit=True) as conn:
        if _refused_or_done(conn, "CREATE TEMP TABLE pgw_psycopg_temp (x int)"):
            conn.execute("INSERT INTO pgw_psycopg_temp VALUES (1)")
            assert conn.execute("SELECT x FROM pgw_psycopg_temp").fetchall() == [(1,)]
    assert _probe_new_clients(fresh_proxy, "to_regclass('pgw_psycopg_temp')") == {(None,)}


def test_advisory_lock_is_released_when_the_client_leaves(fresh_proxy, pg):
    key = 917_000_000 + os.getpid()
    with connect(fresh_proxy, autocommit=True) as conn:
        if _refused_or_done(conn, "SELECT pg_try_advisory_lock(%s)", (key,)):
            # While the client holds it, nobody else gets it.
            assert pg.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (False,)
    time.sleep(0.2)
    # Once the client has gone, PostgreSQL itself sees the lock free.
    assert pg.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
    pg.execute("SELECT pg_advisory_unlock(%s)", (key,))


def test_startup_parameters_apply_on_every_backend(tx_proxy):
    """application_name and `options` given at connect time hold in every transaction, on any backend."""

    def worker(n: int) -> list[tuple]:
        dsn = tx_proxy.dsn(
            connect_timeout=10,
            application_name=f"pgw-start-{n}",
            options=f"'-c statement_timeout={1000 + n} -c search_path=pgw_s{n}'",
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            return [
                conn.execute(
                    "SELECT current_setting('application_name'), setting, current_setting('search_path'),"
                    " pg_sleep(0.005)::text FROM pg_settings WHERE name = 'statement_timeout'"
                ).fetchone()[:3]
                for _ in range(10)
            ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(worker, range(20)))
    for n, rows in enumerate(results):
        assert set(rows) == {(f"pgw-start-{n}", f"{1000 + n}", f"pgw_s{n}")}


def test_abandoned_transaction_is_rolled_back(proxy, items, pg):
    conn = connect(proxy)
    conn.execute(f"INSERT INTO {items} (id, name) VALUES (1, 'never committed')")
    conn.close()  # the client leaves in the middle of its transaction
    time.sleep(0.2)
    assert pg.execute(f"SELECT count(*) FROM {items}").fetchone() == (0,)

    def probe(_: int) -> tuple:
        with connect(proxy, autocommit=True) as c:
            return c.execute(
                f"SELECT count(*), txid_current_if_assigned() IS NULL, pg_sleep(0.05)::text FROM {items}"
            ).fetchone()[:2]

    # On whichever backend they land, new clients are outside any transaction and see no row.
    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(probe, range(12))) == {(0, True)}


def test_cancel_reaches_only_its_own_query(tx_proxy):
    """A client's cancel must never hit another client's query on the backend it used before."""
    with connect(tx_proxy, autocommit=True) as idle:
        idle.execute("SELECT 1")

        def sleeper(_: int) -> str:
            with connect(tx_proxy, autocommit=True) as c:
                try:
                    c.execute("SELECT pg_sleep(1)")
                    return "completed"
                except errors.QueryCanceled:
                    return "cancelled"

        with ThreadPoolExecutor(max_workers=10) as pool:
            futures = [pool.submit(sleeper, i) for i in range(10)]
            time.sleep(0.4)
            idle.cancel()  # `idle` runs nothing: no query anywhere may be cancelled
            assert [f.result() for f in futures] == ["completed"] * 10
        assert idle.execute("SELECT 'idle still fine'").fetchone() == ("idle still fine",)


def test_backends_terminated_while_idle_are_replaced(proxy, pg):
    """An operator kills pgwarden's idle backends: the next clients never notice."""

    def work(i: int) -> list[int]:
        with psycopg.connect(proxy.dsn(dbname=dbname, connect_timeout=10), autocommit=True) as conn:
            return [conn.execute("SELECT %s::int, pg_sleep(0.02)::text", (i,)).fetchone()[0] for _ in range(3)]

    with scratch_database(unique(f"pgw_terminate_{pool_mode(proxy)}")) as dbname:
        with ThreadPoolExecutor(max_workers=10) as pool:
            assert list(pool.map(work, range(10))) == [[i] * 3 for i in range(10)]
        killed = pg.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        ).fetchone()[0]
        assert killed > 0 or isinstance(proxy, DirectPostgres)
        time.sleep(0.3)
        with ThreadPoolExecutor(max_workers=10) as pool:
            assert list(pool.map(work, range(10))) == [[i] * 3 for i in range(10)]


def test_databases_never_share_backends(proxy):
    """Clients of two databases at once: each statement runs in the client's own database."""

    def work(dbname: str, n: int) -> list:
        wrong = []
        with psycopg.connect(proxy.dsn(dbname=dbname, connect_timeout=10), autocommit=n % 2 == 0) as conn:
            for _ in range(8):  # past prepare_threshold: named statements in both databases
                got = conn.execute("SELECT current_database(), %s::int, pg_sleep(0.005)::text", (n,)).fetchone()[:2]
                if got != (dbname, n):
                    wrong.append((dbname, n, got))
                if not conn.autocommit:
                    conn.commit()
        return wrong

    with scratch_database(unique("pgw_db_a")) as a, scratch_database(unique("pgw_db_b")) as b:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda n: work(a if n % 2 else b, n), range(20)))
    assert [w for r in results for w in r] == []


def _many_statements_worker(proxy, n: int) -> list:
    wrong = []
    with connect(proxy, autocommit=True, prepare_threshold=0) as conn:
        for round_ in range(3):
            for q in range(20):
                got = conn.execute(f"SELECT %s::int * 100 + {q}", (n,)).fetchone()[0]
                if got != n * 100 + q:
                    wrong.append((n, round_, q, got))
    return wrong


def test_backend_statement_limit_evicts_and_reprepares(make_proxy):
    """Far more statements than a backend may keep: pgwarden closes old ones and prepares them again."""
    proxy = make_proxy(pool={"mode": "transaction", "size": 4, "prepared_statements_per_backend": 5})
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: _many_statements_worker(proxy, n), range(8)))
    assert [w for r in results for w in r] == []


def test_waiting_for_a_backend(make_proxy):
    """Clients beyond the pool wait for a backend, get one as soon as it is free, or 53300 after the timeout."""
    proxy = make_proxy(pool={"mode": "transaction", "size": 2, "query_wait_timeout": 1.5})
    skip_if_direct(proxy)
    with connect(proxy) as first, connect(proxy) as second, connect(proxy, autocommit=True) as third:
        first.execute("SELECT 1")  # both backends now held by open transactions
        second.execute("SELECT 1")
        start = time.monotonic()
        with pytest.raises(errors.TooManyConnections):
            third.execute("SELECT 'waited too long'")
        assert 1.0 < time.monotonic() - start < 5
        assert third.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(lambda: third.execute("SELECT 'got one'").fetchone())
            time.sleep(0.3)
            assert not waiting.done()
            first.commit()
            assert waiting.result(timeout=2) == ("got one",)
        second.commit()


def test_with_hold_cursor_across_commits(proxy, items):
    """A WITH HOLD cursor outlives its transaction: the client must keep that backend until it closes it."""
    with connect(proxy) as writer:
        writer.execute(f"INSERT INTO {items} (id, name) SELECT g, 'h' || g FROM generate_series(1, 300) g")
        writer.commit()

    def reader(n: int) -> list[int]:
        with connect(proxy) as conn:
            with conn.cursor(name=f"pgw_hold_{n}", withhold=True) as cur:
                cur.execute(f"SELECT id FROM {items} WHERE id %% 3 = %s ORDER BY id", (n % 3,))
                conn.commit()  # the cursor stays open
                ids = []
                while batch := cur.fetchmany(17):
                    ids += [r[0] for r in batch]
                    conn.execute("SELECT pg_sleep(0.002)")
                    conn.commit()
            conn.commit()
            return ids

    with ThreadPoolExecutor(max_workers=15) as pool:
        results = list(pool.map(reader, range(15)))
    assert results == [[i for i in range(1, 301) if i % 3 == n % 3] for n in range(15)]
