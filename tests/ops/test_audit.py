"""The audit trail through a real pgwarden: what is recorded, tamper evidence, and no silent loss."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from tests.harness import REDIS_URL, ROOT
from tests.policy.conftest import connect, policy_proxy, shop_db  # noqa: F401 (fixture)

KEY_ENV = {"PGWARDEN_AUDIT_KEY": "audit-test-key"}


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **KEY_ENV},
    )


@pytest.fixture
def audited(shop_db, tmp_path):
    proxy = policy_proxy(
        tmp_path / "a", "transaction", env=KEY_ENV, audit={"path": "audit.jsonl", "hmac_key_env": "PGWARDEN_AUDIT_KEY"}
    )
    yield proxy, tmp_path / "a" / "audit.jsonl"
    proxy.stop()


def test_every_kind_of_event_is_recorded_redacted_and_chained(audited):
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        conn.execute("select name from customers where email = 'ann@acme.io'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from secrets")
    with connect(proxy, "postgres") as conn:
        conn.execute("select 42")
    proxy.stop()
    got = records(path)
    events = [r["event"] for r in got]
    assert events.count("login") == 2 and events.count("logout") == 2
    rewritten = next(r for r in got if r.get("decision") == "rewritten")
    assert rewritten["user"] == "acme_app" and rewritten["tenant"] == "acme"
    assert rewritten["tables"] == ["public.customers"] and "public.customers.ssn" in rewritten["masked"]
    assert "ann@acme.io" not in rewritten["sql"] and "?" in rewritten["sql"]
    assert len(rewritten["rewritten_sha256"]) == 64
    refused = next(r for r in got if r.get("decision") == "refused")
    assert refused["rule"] == "tables.public.secrets" and refused["sqlstate"] == "42501"
    bypass = next(r for r in got if r.get("user") == "postgres" and r["event"] == "statement")
    assert bypass["bypass"] is True and bypass["decision"] == "allowed"
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    result = verify(path)
    assert result.returncode == 0 and f"{len(got)} records" in result.stdout


def test_a_listen_pgwarden_answers_is_recorded_and_every_statement_has_its_kind(audited):
    """LISTEN runs on the pool's listening backend, not the client's: it is in the trail all the same."""
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        conn.execute("listen jobs")
        conn.execute("unlisten jobs", prepare=True)  # (the extended protocol)
        conn.execute("select name from customers")
    proxy.stop()
    statements = [r for r in records(path) if r["event"] == "statement"]
    assert [(r["sql"], r["kind"], r["route"], r["tenant"], r["sqlstate"]) for r in statements[:2]] == [
        ("listen jobs", "listen", "primary", "acme", "00000"),
        ('UNLISTEN "jobs"', "unlisten", "primary", "acme", "00000"),
    ]
    assert statements[2]["kind"] == "select" and statements[2]["decision"] == "rewritten"
    assert verify(path).returncode == 0


def test_verify_names_an_edited_a_deleted_and_a_reordered_record(audited, tmp_path):
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        for i in range(5):
            conn.execute(f"select {i}")
    proxy.stop()
    lines = path.read_text().splitlines()
    assert len(lines) >= 7
    cases = {
        "edited": lines[:3] + [lines[3].replace('"acme_app"', '"globex_app"')] + lines[4:],
        "deleted": lines[:3] + lines[4:],
        "reordered": lines[:3] + [lines[4], lines[3]] + lines[5:],
        "truncated": lines[:-1] + [lines[-1][:20]],
    }
    for name, broken in cases.items():
        damaged = tmp_path / f"{name}.jsonl"
        damaged.write_text("\n".join(broken) + "\n")
        result = verify(damaged)
        assert result.returncode == 1, name
        assert f"{damaged}:4" in result.stderr or (
            name == "truncated" and f"{damaged}:{len(lines)}" in result.stderr
        ), (name, result.stderr)


def test_an_unwritable_sink_refuses_statements_in_block_mode(shop_db, tmp_path):
    proxy = policy_proxy(
        tmp_path / "b", "transaction", audit={"path": "/proc/pgwarden-no/audit.jsonl", "block_timeout": 1}
    )
    try:
        with connect(proxy, "acme_app") as conn:
            with pytest.raises(psycopg.errors.IoError) as info:
                conn.execute("select count(*) from customers")
            assert "audit" in str(info.value) and info.value.diag.message_hint
        assert "audit sink unavailable" in proxy.logs()
    finally:
        proxy.stop()


def test_drop_mode_runs_statements_and_counts_the_loss(shop_db, tmp_path):
    proxy = policy_proxy(
        tmp_path / "d", "transaction", audit={"path": "/proc/pgwarden-no/audit.jsonl", "on_failure": "drop"}
    )
    try:
        with connect(proxy, "acme_app") as conn:
            started = __import__("time").monotonic()
            assert conn.execute("select count(*) from customers").fetchone() == (2,)
            assert __import__("time").monotonic() - started < 2  # drop mode never holds statements
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5).read().decode()
        dropped = [line for line in text.splitlines() if line.startswith("pgwarden_audit_dropped ")]
        assert dropped and float(dropped[0].split()[1]) >= 1
    finally:
        proxy.stop()


def test_report_renders_every_section_from_real_records(audited, tmp_path):
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        conn.execute("select name from customers")
        conn.execute("insert into orders (id, customer_id, total) values (77, 1, 1)")
        conn.execute("delete from orders where id = 77")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from secrets")
    with connect(proxy, "postgres") as conn:
        conn.execute("select count(*) from secrets")
    proxy.stop()
    out = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "report", str(path), "--format", "html", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    for section in (
        "Access by role and tenant",
        "Writes",
        "Refusals",
        "Bypass-role activity",
        "Top statements",
        "<svg",
        "Refusals by rule",
        "public.customers.ssn",
        "tables.public.secrets",
    ):
        assert section in page, section
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    md = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "report", str(path), "--format", "md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert "## Writes" in md and "delete from orders where id = ?" in md
    csv_text = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "audit",
            "report",
            str(path),
            "--format",
            "csv",
            "--from",
            "2000-01-01",
            "--to",
            "2000-01-02",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert csv_text == ""  # nothing in that period


def test_records_also_go_to_a_redis_stream(shop_db, tmp_path):
    import redis

    stream = f"pgwarden-test-{tmp_path.name}"
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(stream)
    proxy = policy_proxy(
        tmp_path / "r", "transaction", audit={"path": "audit.jsonl", "redis_stream": stream, "redis_url": REDIS_URL}
    )
    try:
        with connect(proxy, "acme_app") as conn:
            conn.execute("select count(*) from customers")
    finally:
        proxy.stop()
    entries = [json.loads(fields[b"record"]) for _, fields in client.xrange(stream)]
    client.delete(stream)
    assert [e["event"] for e in entries] == [r["event"] for r in records(tmp_path / "r" / "audit.jsonl")]
    assert any(e.get("decision") == "rewritten" for e in entries)


def test_each_execution_of_a_prepared_statement_is_a_record(audited):
    import asyncio

    import asyncpg

    proxy, path = audited

    async def run() -> None:
        conn = await asyncpg.connect(proxy.url(user="acme_app", dbname="pgw_policy"))
        try:
            stmt = await conn.prepare("select count(*) from customers where id > $1")
            for i in range(3):
                await stmt.fetchval(i)
        finally:
            await conn.close()

    asyncio.run(run())
    proxy.stop()
    executions = [
        r for r in records(path) if r.get("event") == "statement" and "customers where id > $1" in r.get("sql", "")
    ]
    assert len(executions) == 3 and all(r["decision"] == "rewritten" for r in executions)


def test_statement_records_carry_duration_rows_and_sqlstate(audited):
    proxy, path = audited
    with connect(proxy, "postgres") as conn:  # without parameters psycopg sends simple Queries
        conn.execute("select generate_series(1, 4)")
        conn.execute("select pg_sleep(0.05)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / 0")
        conn.execute("select generate_series(1, %s)", (6,), prepare=True)
        conn.execute("select generate_series(1, %s)", (2,), prepare=True)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / %s", (0,))
    proxy.stop()
    got = [(r["protocol"], r["sql"], r["rows"], r["sqlstate"]) for r in records(path) if r["event"] == "statement"]
    assert got == [
        ("simple", "select generate_series(?, ?)", 4, "00000"),
        ("simple", "select pg_sleep(?)", 1, "00000"),
        ("simple", "select ? / ?", 0, "22012"),
        ("extended", "select generate_series(?, $1)", 6, "00000"),
        ("extended", "select generate_series(?, $1)", 2, "00000"),
        ("extended", "select ? / $1", 0, "22012"),
    ]
    slept = next(r for r in records(path) if r.get("sql") == "select pg_sleep(?)")
    assert 50 <= slept["duration_ms"] < 5000
    assert verify(path).returncode == 0


def test_a_refused_statement_is_recorded_once_with_its_rule(audited):
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from secrets")
        assert conn.execute("select count(*) from customers").fetchone() == (2,)
    proxy.stop()
    got = [r for r in records(path) if r["event"] == "statement"]
    assert [(r["decision"], r["sqlstate"]) for r in got] == [("refused", "42501"), ("rewritten", "00000")]
    assert got[1]["rows"] == 1


def test_a_statement_cut_short_by_a_disconnect_is_recorded_as_unfinished(audited):
    import signal
    import time

    proxy, path = audited
    psql = subprocess.Popen(
        [
            "psql",
            "-h",
            proxy.host,
            "-p",
            str(proxy.port),
            "-U",
            "postgres",
            "-X",
            "-q",
            "-c",
            "select pg_sleep(3)",
            "postgres",
        ],
        env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )
    time.sleep(1.0)
    psql.send_signal(signal.SIGKILL)
    psql.wait()
    time.sleep(0.3)
    proxy.stop()
    slept = [r for r in records(path) if r.get("sql") == "select pg_sleep(?)"]
    assert len(slept) == 1 and slept[0]["completed"] is False and slept[0]["sqlstate"] is None
    assert verify(path).returncode == 0


def test_a_pipeline_in_one_write_keeps_its_records_in_order_and_chained(audited):
    """Five Parse/Bind/Execute and one Sync in one write: one queued entry for the round trip, five records."""
    proxy, path = audited
    with connect(proxy, "postgres") as conn:
        with conn.pipeline():
            for i in range(5):
                conn.execute(f"select %s::int as c{i}", (i,))
        conn.execute("select 'after'")
    proxy.stop()
    got = [r for r in records(path) if r["event"] == "statement"]
    assert [r["sql"] for r in got] == [f"select $1::int as c{i}" for i in range(5)] + ["select ?"]
    shared = {(r["protocol"], r["sqlstate"], r["rows"], r["duration_ms"]) for r in got[:5]}
    assert len(shared) == 1 and next(iter(shared))[:2] == ("extended", "00000")  # one round trip: the Sync's
    assert [r["seq"] for r in records(path)] == list(range(1, len(records(path)) + 1))
    assert verify(path).returncode == 0
