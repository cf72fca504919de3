"""The admin console through psql, as an operator uses it; anyone not in admin.users is refused."""

from __future__ import annotations

import subprocess
import threading
import time

import psycopg
import pytest

ENV = {"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"}


def admin(proxy, command: str, user: str = "ops") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", proxy.host, "-p", str(proxy.port), "-U", user, "-X", "-A", "-F", "|", "pgwarden", "-c", command],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=20,
    )


@pytest.fixture
def console(make_proxy):
    proxy = make_proxy(admin={"users": ["ops"]}, pool={"size": 2})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
    return proxy


def rows(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    return [line.split("|") for line in lines[1:-1]]  # header ... (n rows)


def test_show_commands_report_the_running_state(console):
    pools = rows(admin(console, "SHOW POOLS"))
    assert pools[0][:2] == ["postgres", "postgres"] and pools[0][5] == "1"  # one idle backend
    clients = rows(admin(console, "SHOW CLIENTS"))
    assert any(c[1] == "ops" and c[2] == "pgwarden" for c in clients)
    servers = rows(admin(console, "SHOW SERVERS"))
    assert servers and servers[0][1] == "postgres/postgres" and servers[0][2] == "idle"
    stats = dict(rows(admin(console, "SHOW STATS")))
    assert float(stats["uptime_s"]) > 0 and stats["pools"] == "1"
    config = dict(rows(admin(console, "SHOW CONFIG")))
    assert config["pool.size"] == "2" and config["pool.mode"] == "transaction"
    assert rows(admin(console, "SHOW POLICY")) == [["no policy loaded"]]
    assert "SHOW POOLS" in admin(console, "SHOW HELP").stdout


def test_unknown_command_and_non_admin_are_refused(console):
    bad = admin(console, "SHOW EVERYTHING")
    assert "unknown admin command" in bad.stderr and "KILL db, RECONNECT db, SHUTDOWN" in bad.stderr
    refused = admin(console, "SHOW POOLS", user="mallory")
    assert refused.returncode != 0 and "may not use the admin console" in refused.stderr


def test_pause_holds_new_transactions_until_resume(console):
    assert admin(console, "PAUSE").stdout.strip() == "PAUSE"
    done: list[float] = []

    def query() -> None:
        with psycopg.connect(console.dsn(), autocommit=True) as conn:
            conn.execute("select 1")
            done.append(time.monotonic())

    worker = threading.Thread(target=query)
    worker.start()
    time.sleep(1.0)
    assert not done, "a paused pool lends no backend"
    resumed = time.monotonic()
    assert admin(console, "RESUME").stdout.strip() == "RESUME"
    worker.join(10)
    assert done and done[0] >= resumed


def test_reload_kill_and_shutdown(console):
    assert admin(console, "RELOAD").stdout.strip() == "RELOAD"
    conn = psycopg.connect(console.dsn(), autocommit=True)
    conn.execute("select 1")
    reconnected = admin(console, "RECONNECT postgres").stdout.strip()
    assert reconnected.startswith("RECONNECT ") and int(reconnected.split()[1]) >= 1  # (the idle ones, now)
    conn.execute("select 1")  # (RECONNECT replaces backends; their clients stay)
    assert admin(console, "KILL postgres").stdout.strip() == "KILL 1"
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    assert admin(console, "SHUTDOWN").stdout.strip() == "SHUTDOWN"
    assert console.proc.wait(15) == 0


def test_slow_statements_are_logged_and_show_queries_ranks_by_time(make_proxy, tmp_path):
    proxy = make_proxy(admin={"users": ["ops"]}, slow_query={"threshold_ms": 50, "path": "slow.jsonl"})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select pg_sleep(0.12), 'secret-literal'")
        for i in range(5):
            conn.execute("select %s::int", (i,))
        conn.execute("select generate_series(1, 7)", prepare=True)
        conn.execute("create temp table rowcount (a int)")
        conn.execute("insert into rowcount select generate_series(1, 3)")
    time.sleep(1.5)  # the janitor aggregates once a second
    slow = (proxy.workdir / "slow.jsonl").read_text().splitlines()
    assert len(slow) == 1 and "pg_sleep" in slow[0] and "secret-literal" not in slow[0]
    assert __import__("json").loads(slow[0])["rows"] == 1
    queries = rows(admin(proxy, "SHOW QUERIES"))
    assert "pg_sleep" in queries[0][-1] and float(queries[0][2]) >= 120
    assert any(q[1] == "5" and q[6] == "5" for q in queries), queries  # 5 calls, a row each
    by_text = {q[-1]: q for q in queries}
    assert by_text["select generate_series(?, ?)"][6] == "7", queries  # a named prepared statement
    assert by_text["insert into rowcount select generate_series(?, ?)"][6] == "3", queries


def test_slow_selects_get_their_plan_when_explain_is_on(make_proxy):
    proxy = make_proxy(slow_query={"threshold_ms": 50, "path": "slow.jsonl", "explain": True})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select pg_sleep(0.1) from pg_class limit 1")
    deadline = time.monotonic() + 5
    path = proxy.workdir / "slow.jsonl"
    while time.monotonic() < deadline and not (path.exists() and path.read_text().strip()):
        time.sleep(0.2)
    record = __import__("json").loads(path.read_text().splitlines()[0])
    assert record["plan"][0]["Plan"]["Node Type"] in ("Limit", "Result")
