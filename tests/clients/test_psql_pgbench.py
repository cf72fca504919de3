"""psql (-c, \\copy in and out, killed mid-query) and pgbench (init, simple/extended/prepared) through pgwarden."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.clients.support import direct_dsn, direct_execute, pool_mode, scratch_database, skip_if_direct, unique

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        shutil.which("psql") is None or shutil.which("pgbench") is None, reason="psql and pgbench are not installed"
    ),
]

TABLE = unique("pgw_psql_copy")
ENV = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable", "PGOPTIONS": ""}


def psql(proxy, *args: str, dbname: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
    """Run psql through the proxy without a psqlrc, unaligned and tuples-only."""
    cmd = [
        "psql",
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        proxy.host,
        "-p",
        str(proxy.port),
        "-U",
        "postgres",
        "-d",
        dbname,
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def copy_table():
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")
    direct_execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text, note text, amount numeric)")
    yield TABLE
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")


def test_psql_c_returns_results(proxy):
    out = psql(
        proxy,
        "-c",
        "SELECT 1 + 1, 'héllo', NULL::int IS NULL",
        "-c",
        "SELECT string_agg(g::text, ',') FROM generate_series(1, 5) g",
    ).stdout
    assert out.splitlines() == ["2|héllo|t", "1,2,3,4,5"]
    # A multi-statement string: psql 15 prints every result.
    out = psql(proxy, "-c", "SELECT 'a'; SELECT current_database(); SELECT 40 + 2").stdout
    assert out.splitlines() == ["a", "postgres", "42"]


def test_psql_error_then_usable(proxy):
    result = psql(proxy, "-c", "SELECT 1/0", check=False)
    assert result.returncode != 0
    assert "division by zero" in result.stderr
    # Same session: the error is reported and the following command still runs.
    result = psql(proxy, "-v", "ON_ERROR_STOP=0", "-c", "SELECT 1/0", "-c", "SELECT 'after'", check=False)
    assert "division by zero" in result.stderr
    assert result.stdout.splitlines() == ["after"]


def test_psql_script_with_savepoints_and_gexec(proxy, copy_table, tmp_path):
    """A psql script: ON_ERROR_ROLLBACK wraps each statement in a savepoint; \\gexec runs generated SQL."""
    script = tmp_path / "script.sql"
    script.write_text(f"""\\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO {copy_table} (id, name) VALUES (1, 'first');
INSERT INTO {copy_table} (id, name) VALUES (1, 'duplicate');
INSERT INTO {copy_table} (id, name) VALUES (2, 'second');
COMMIT;
SELECT format('INSERT INTO {copy_table} (id, name) VALUES (%s, %L)', g, 'gen ' || g) FROM generate_series(3, 5) g
\\gexec
SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM {copy_table};
""")
    result = psql(proxy, "-v", "ON_ERROR_STOP=0", "-f", str(script), check=False)
    assert "duplicate key value violates unique constraint" in result.stderr
    assert result.stdout.splitlines()[-1] == "1:first,2:second,3:gen 3,4:gen 4,5:gen 5"


def test_psql_large_objects(proxy, tmp_path):
    """\\lo_import and \\lo_export: libpq's large-object calls travel as fastpath FunctionCall messages."""
    blob = os.urandom(300_000)
    (tmp_path / "in.bin").write_bytes(blob)
    script = tmp_path / "lo.sql"
    script.write_text(f"""BEGIN;
\\lo_import {tmp_path / "in.bin"}
SELECT md5(lo_get(:LASTOID));
\\lo_export :LASTOID {tmp_path / "out.bin"}
\\lo_unlink :LASTOID
COMMIT;
""")
    out = psql(proxy, "-f", str(script)).stdout
    assert hashlib.md5(blob).hexdigest() in out.splitlines()
    assert (tmp_path / "out.bin").read_bytes() == blob


def _rows(n: int) -> list[list[str | None]]:
    """Rows with the awkward CSV cases: commas, quotes, newlines, unicode, empty strings, NULLs."""
    notes = ["plain", "comma, inside", 'quote " inside', "line\nbreak", "ünïcødé ✓", "", None]
    return [[str(i), f"name-{i}", notes[i % len(notes)], f"{i}.{i % 100:02d}"] for i in range(1, n + 1)]


def test_clients_killed_mid_query_leave_nothing_behind(proxy):
    """psql processes killed while their queries run: the next clients get their own answers only."""
    killed = [
        subprocess.Popen(
            [
                "psql",
                "-X",
                "-At",
                "-h",
                proxy.host,
                "-p",
                str(proxy.port),
                "-U",
                "postgres",
                "-c",
                f"SELECT pg_sleep(1), 'from killed {i}' FROM generate_series(1, 3)",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        for i in range(10)
    ]
    time.sleep(0.7)
    for process in killed:
        process.kill()
        process.wait()

    def mine(i: int) -> list[str]:
        with psycopg.connect(proxy.dsn(connect_timeout=10), autocommit=True) as conn:
            return [conn.execute("SELECT %s::text", (f"mine {i}",)).fetchone()[0] for _ in range(5)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(mine, range(10))) == [[f"mine {i}"] * 5 for i in range(10)]


def _csv_field(value: str) -> str:
    """One CSV field, quoted when it must be."""
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def test_psql_copy_in_and_out_round_trip(proxy, copy_table, tmp_path):
    rows = _rows(20_000)
    src = tmp_path / "in.csv"
    # NULL is spelled \N so that empty strings stay empty strings.
    src.write_text("".join(",".join("\\N" if v is None else _csv_field(v) for v in r) + "\n" for r in rows))
    out = psql(proxy, "-c", f"\\copy {copy_table} FROM '{src}' WITH (FORMAT csv, NULL '\\N')").stdout
    assert out.strip() == "COPY 20000"

    with psycopg.connect(direct_dsn()) as conn:
        stored = conn.execute(f"SELECT id, name, note, amount::text FROM {copy_table} ORDER BY id").fetchall()
    assert [[str(i), n, note, a] for i, n, note, a in stored] == rows

    dst = tmp_path / "out.csv"
    out = psql(
        proxy, "-c", f"\\copy (SELECT * FROM {copy_table} ORDER BY id) TO '{dst}' WITH (FORMAT csv, NULL '\\N')"
    ).stdout
    assert out.strip() == "COPY 20000"
    assert dst.read_text() == src.read_text()

    # \copy ... TO STDOUT goes through the same CopyOut path, printed by psql.
    out = psql(proxy, "-c", f"\\copy (SELECT id, name FROM {copy_table} WHERE id <= 3 ORDER BY id) TO STDOUT").stdout
    assert out.splitlines() == ["1\tname-1", "2\tname-2", "3\tname-3"]


def test_psql_copy_error_keeps_table_unchanged(proxy, copy_table, tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("1,a,x,1.5\n2,b,y,not-a-number\n")
    result = psql(proxy, "-c", f"\\copy {copy_table} FROM '{src}' WITH (FORMAT csv)", check=False)
    assert result.returncode != 0
    assert "invalid input syntax for type numeric" in result.stderr
    with psycopg.connect(direct_dsn()) as conn:
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)


@pytest.fixture(scope="module")
def bench_db(proxy):
    """A scratch database initialised by `pgbench -i` through the proxy."""
    name = unique(f"pgw_pgbench_{pool_mode(proxy)}")
    with scratch_database(name):
        result = subprocess.run(
            ["pgbench", "-i", "-q", "-s", "1", "-h", proxy.host, "-p", str(proxy.port), "-U", "postgres", name],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        with psycopg.connect(direct_dsn(name)) as conn:
            assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone() == (100_000,)
            assert conn.execute("SELECT count(*) FROM pgbench_tellers").fetchone() == (10,)
        yield name


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench(proxy, bench_db, protocol):
    # Session pooling gives each client a backend for its whole life: more clients than backends
    # would wait by design, so session mode runs as many clients as the pool has backends.
    clients = 20 if pool_mode(proxy) == "transaction" else proxy.config["pool"]["size"]
    before = _balances(bench_db)
    # Generous against -T 2; a stalled run is killed rather than left to the pool's 30 s wait.
    result = subprocess.run(
        [
            "pgbench",
            "-M",
            protocol,
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            "2",
            "-h",
            proxy.host,
            "-p",
            str(proxy.port),
            "-U",
            "postgres",
            bench_db,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=12,
    )
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"query mode: {protocol}" in out
    assert f"number of clients: {clients}" in out
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    failed = int(re.search(r"number of failed transactions: (\d+)", out).group(1))
    assert failed == 0
    assert processed > 20
    # Every TPC-B transaction wrote one history row (pgbench truncates it before a run) and moved
    # its delta into one account, one teller and one branch: nothing lost, nothing half-applied.
    with psycopg.connect(direct_dsn(bench_db)) as conn:
        history, delta = conn.execute("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history").fetchone()
    assert history == processed
    after = _balances(bench_db)
    assert [a - b for a, b in zip(after, before)] == [delta] * 3


PIPELINE_SCRIPT = """\\set a random(1, 1000)
\\startpipeline
SELECT :a + 1;
BEGIN;
INSERT INTO pgw_pgbench_pipeline (client, a) VALUES (:client_id, :a);
UPDATE pgw_pgbench_pipeline SET a = a + 1 WHERE client = :client_id AND a = :a;
COMMIT;
SELECT :a * 2;
\\endpipeline
"""


@pytest.mark.parametrize("protocol", ["extended", "prepared"])
def test_pgbench_pipeline_script(proxy, bench_db, protocol, tmp_path):
    """A custom script sent in pipeline mode: several Syncs in flight, a transaction among them."""
    direct_execute("DROP TABLE IF EXISTS pgw_pgbench_pipeline", bench_db)
    direct_execute("CREATE TABLE pgw_pgbench_pipeline (client int, a int)", bench_db)
    script = tmp_path / "pipeline.sql"
    script.write_text(PIPELINE_SCRIPT)
    result = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            protocol,
            "-f",
            str(script),
            "-c",
            "10",
            "-j",
            "2",
            "-t",
            "100",
            "-h",
            proxy.host,
            "-p",
            str(proxy.port),
            "-U",
            "postgres",
            bench_db,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "number of transactions actually processed: 1000/1000" in result.stdout
    assert "number of failed transactions: 0" in result.stdout
    with psycopg.connect(direct_dsn(bench_db)) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT client) FROM pgw_pgbench_pipeline").fetchone()
    assert rows == (1000, 10)


def test_pgbench_connection_per_transaction(proxy, bench_db):
    """pgbench -C: 500 logins and logouts, each client reconnecting for every select-only transaction."""
    result = subprocess.run(
        [
            "pgbench",
            "-n",
            "-C",
            "-S",
            "-c",
            "10",
            "-j",
            "2",
            "-t",
            "50",
            "-h",
            proxy.host,
            "-p",
            str(proxy.port),
            "-U",
            "postgres",
            bench_db,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "number of transactions actually processed: 500/500" in result.stdout
    assert "number of failed transactions: 0" in result.stdout


def test_pgbench_through_reloads(proxy, make_proxy, bench_db):
    """SIGHUP twice while 10 pgbench clients run TPC-B: no connection dropped, no transaction failed."""
    skip_if_direct(proxy)
    own = make_proxy(pool={"mode": pool_mode(proxy), "size": 10})
    bench = subprocess.Popen(
        [
            "pgbench",
            "-n",
            "-M",
            "extended",
            "-c",
            "10",
            "-j",
            "2",
            "-T",
            "3",
            "-h",
            own.host,
            "-p",
            str(own.port),
            "-U",
            "postgres",
            bench_db,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    for _ in range(2):
        time.sleep(1)
        own.reload()
    out, err = bench.communicate(timeout=30)
    assert bench.returncode == 0, out + err
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert processed > 10
    assert "number of failed transactions: 0" in out


def _balances(dbname: str) -> tuple[int, int, int]:
    """Sums of account, branch and teller balances."""
    with psycopg.connect(direct_dsn(dbname)) as conn:
        return conn.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT sum(tbalance) FROM pgbench_tellers)"
        ).fetchone()
