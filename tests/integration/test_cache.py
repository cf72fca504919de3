"""The result cache through real pgwarden processes, a real PostgreSQL (wal_level=logical) and Redis: answers
served again, never stale for writes through any pgwarden, within the bound for writes straight to PostgreSQL,
never shared between tenants or roles, dropped after DDL and REVOKE, no wrong answer while Redis dies, and
every answer in the audit trail."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests import rawwire
from tests.harness import REDIS_URL, ROOT, ProxyProcess, base_config, free_port, redis_server, scrape
from tests.pgcluster import PgCluster
from tests.rawwire import Wire

SCHEMA = """
create table items (id int primary key, name text, qty int);
create table notes (id int primary key, body text);
create table ledger (id serial primary key, item int, delta int);
create table customers (id int primary key, tenant_id text not null, name text, email text);
insert into items select g, 'item' || g, g from generate_series(1, 50) g;
insert into notes values (1, 'unlisted');
insert into customers values (1, 'acme', 'Ann', 'ann@acme.io'), (2, 'globex', 'Gus', 'gus@globex.io');
create function ledger_applies() returns trigger language plpgsql as $$
begin update items set qty = qty + new.delta where id = new.item; return new; end $$;
create trigger applies after insert on ledger for each row execute function ledger_applies();
create role acme_app login; create role globex_app login; create role alice login;
grant select on items, customers to acme_app, globex_app, alice;
"""
TABLES = ["public.items", "public.customers", "public.ledger"]
POLICY = """
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme, globex_app: globex, alice: acme}
roles:
  app: {users: [acme_app, globex_app]}
  analyst: {users: [alice]}
  admin: {users: [postgres], bypass: true}
tables:
  public.customers:
    grants: {app: [select], analyst: [select]}
    masks:
      email: {mask: email, roles: [analyst]}
  public.items:
    tenant_column: null
    grants: {"*": [select]}
default: deny
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    settings = ("wal_level = logical", "max_wal_senders = 20", "max_replication_slots = 20")
    with PgCluster(None, free_port(), auth="trust", settings=settings) as cluster:
        cluster.psql(SCHEMA)
        yield cluster


def direct(pg: PgCluster) -> str:
    return f"host={pg.host} port={pg.port} user=postgres dbname=postgres"


def cache_config(pg: PgCluster, **cache) -> dict:
    return base_config(primary={"host": pg.host, "port": pg.port}, cache={"tables": TABLES, **cache})


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"pgwarden:test:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def serving(proxy: ProxyProcess, timeout: float = 10.0) -> None:
    """Wait until the proxy's WAL consumer serves the database (it starts at the first login)."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
    deadline = time.monotonic() + timeout
    while scrape(proxy).get(("pgwarden_cache_serving", (("database", "postgres"),))) != 1:
        assert time.monotonic() < deadline, proxy.logs()
        time.sleep(0.05)


def hits(proxy: ProxyProcess) -> float:
    return scrape(proxy).get(("pgwarden_cache_hits_total", ()), 0.0)


def name_of(conn: psycopg.Connection, item: int = 5, **kw) -> str:
    row = conn.execute("select name from items where id = %s", (item,), **kw).fetchone()
    assert row is not None
    return row[0]


def test_answers_come_again_and_a_write_through_pgwarden_is_seen_at_once(pg: PgCluster, tmp_path: Path) -> None:
    with ProxyProcess(cache_config(pg), tmp_path) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        serving(proxy)
        before = hits(proxy)
        assert [name_of(conn) for _ in range(3)] == ["item5"] * 3
        assert hits(proxy) - before == 2  # the first read filled it
        for n in range(20):  # each write's answer waited for the WAL consumer: the next read is never old
            conn.execute("update items set name = %s where id = 5", (f"w{n}",))
            assert name_of(conn) == f"w{n}" and name_of(conn) == f"w{n}"
        with conn.transaction():  # inside a transaction block: its own snapshot, never the cache
            conn.execute("update items set name = 'rolled back' where id = 5")
            assert name_of(conn) == "rolled back"
            raise psycopg.Rollback()
        assert name_of(conn) == "w19"
        conn.execute("insert into ledger (item, delta) values (5, 100)")  # a trigger writes items
        assert conn.execute("select qty from items where id = 5").fetchone() == (105,)
        assert conn.execute("select qty from items where id = 5").fetchone() == (105,)


RR = "set default_transaction_isolation = 'repeatable read'"


@pytest.fixture(scope="module")
def shared_proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One pgwarden with the cache for tests that need nothing else of their own."""
    with ProxyProcess(cache_config(pg), tmp_path_factory.mktemp("shared")) as proxy:
        serving(proxy)
        yield proxy


@pytest.mark.parametrize(
    ("setup", "begin", "answered_in_block", "sees_new"),
    [
        ([], ["begin read only"], True, True),
        ([], ["start transaction isolation level read committed, read only"], True, True),
        ([], ["begin isolation level repeatable read read only"], False, False),
        ([], ["begin read only", "set transaction isolation level serializable"], False, False),
        ([RR], ["begin read only"], False, False),  # the session's default
        ([], ["begin"], False, True),  # (not READ ONLY)
    ],
)
def test_a_read_only_block_is_answered_from_the_cache_only_at_read_committed(
    shared_proxy: ProxyProcess,
    pg: PgCluster,
    setup: list[str],
    begin: list[str],
    answered_in_block: bool,
    sees_new: bool,
) -> None:
    """At READ COMMITTED each statement of a READ ONLY block takes a new snapshot, as outside one:
    the cache may answer. At REPEATABLE READ (asked for, set after BEGIN, or the session's default)
    the block keeps its first snapshot: a newer answer from the cache would be wrong."""
    item, proxy = 30, shared_proxy
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        psycopg.connect(proxy.dsn(), autocommit=True) as other,  # (the same settings: the same keys)
        psycopg.connect(direct(pg), autocommit=True) as straight,
    ):
        serving(proxy)
        for sql in setup:
            conn.execute(sql)
            other.execute(sql)
        old = name_of(other, item, prepare=False)
        for sql in begin:
            conn.execute(sql)
        assert name_of(conn, item, prepare=False) == old
        straight.execute("update items set name = name || '+' where id = %s", (item,))
        deadline = time.monotonic() + 2
        while name_of(other, item, prepare=False) == old:  # (the WAL consumer's bump; then read and stored)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert name_of(other, item, prepare=False) == old + "+"  # (a hit now)
        before = hits(proxy)
        got = name_of(conn, item, prepare=False)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("commit")
        assert (hits(proxy) - before, got) == (int(answered_in_block), old + "+" if sees_new else old)


def test_a_read_only_block_begun_with_a_write_unwaited_for_stays_out_of_the_cache(
    pg: PgCluster, tmp_path: Path
) -> None:
    """BEGIN READ ONLY sent while a write still runs (pipelined): the write's commit is waited for only
    when the block ends, so until then an answer from the cache could be older than the write."""
    read = "select name from items where id = 32"
    with ProxyProcess(cache_config(pg), tmp_path) as proxy:
        serving(proxy)
        other, wire = (Wire(proxy.host, proxy.port, "postgres", "postgres") for _ in range(2))
        assert other.send(rawwire.query(read)).rows == [["item32"]]  # (stored)
        wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.sock.sendall(rawwire.query("update items set name = 'fresh' where id = 32; select pg_sleep(0.3)"))
        time.sleep(0.1)  # (a batch of its own, sent on while the write runs)
        wire.sock.sendall(rawwire.query("begin read only"))
        assert [kind for kind, _ in wire.replies(2).messages].count("E") == 0
        assert wire.send(rawwire.query(read)).rows == [["fresh"]]
        wire.send(rawwire.query("commit"))
        other.close()
        wire.close()


def test_a_later_bind_of_the_unnamed_statement_runs_the_one_the_cache_answered(pg: PgCluster, tmp_path: Path) -> None:
    """A hit never sends its Parse to a backend; the client's unnamed statement is still that one."""
    with ProxyProcess(cache_config(pg), tmp_path) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        serving(proxy)
        assert name_of(conn, 7, prepare=False) == "item7"  # (stored)
        assert conn.execute("select 'other ' || %s::text", ("x",), prepare=False).fetchone() == ("other x",)
        before = hits(proxy)
        assert name_of(conn, 7, prepare=False) == "item7"
        assert hits(proxy) - before == 1
        again = conn.pgconn.exec_prepared(b"", [b"8"])  # Bind/Describe/Execute/Sync of the unnamed statement
        assert (again.status, again.get_value(0, 0)) == (psycopg.pq.ExecStatus.TUPLES_OK, b"item8")


def pipelined(pq: psycopg.pq.abc.PGconn, parse: bytes, bind: bytes, args: list[bytes]) -> bytes | None:
    """Parse of the unnamed statement and a Bind of `bind` in one batch (libpq's pipeline mode); the
    first column of the Bind's first row."""
    pq.enter_pipeline_mode()
    pq.send_prepare(b"", parse)
    pq.send_query_prepared(bind, args)
    pq.pipeline_sync()
    results: list = []
    while len(results) < 3:  # ParseComplete, the Bind's answer, the Sync's
        res = pq.get_result()
        if res is not None:
            results.append(res)
    while pq.get_result() is not None or pq.is_busy():
        pass
    pq.exit_pipeline_mode()
    return results[1].get_value(0, 0) if results[1].ntuples else None


def test_a_batch_whose_bind_names_another_statement_is_not_keyed_by_its_parse(pg: PgCluster, tmp_path: Path) -> None:
    """Parse of the unnamed statement, then Bind of a named one, in one batch: what runs is the named
    statement. Its answer is never stored under the Parse's text (other clients' reads), and it is
    judged as a write when it is one."""
    read = b"select qty from items where id = $1"
    with (
        ProxyProcess(cache_config(pg), tmp_path) as proxy,
        psycopg.connect(proxy.dsn(), autocommit=True) as attacker,
        psycopg.connect(proxy.dsn(), autocommit=True) as victim,
    ):
        serving(proxy)
        pq = attacker.pgconn
        for name, sql in (
            (b"s1", b"select 999 where $1::int is not null"),
            (b"s2", b"update items set qty = $1 where id = 9"),
        ):
            assert pq.prepare(name, sql).status == psycopg.pq.ExecStatus.COMMAND_OK
        assert pipelined(pq, read, b"s1", [b"9"]) == b"999"
        for _ in range(2):  # (the same Parse, Bind and formats as the attacker's)
            assert victim.pgconn.exec_params(read, [b"9"]).get_value(0, 0) == b"9"
        assert pipelined(pq, read, b"s2", [b"77"]) is None  # (its answer waits for the WAL consumer)
        assert victim.pgconn.exec_params(read, [b"9"]).get_value(0, 0) == b"77"


def test_uncacheable_statements_are_never_served(pg: PgCluster, tmp_path: Path) -> None:
    with ProxyProcess(cache_config(pg), tmp_path) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        serving(proxy)
        before = hits(proxy)
        for sql in (
            "select body from notes",  # not listed
            "select now(), name from items where id = 1",  # stable function
            "select name from items where id = 1 for update",
            "select name, random() from items where id = 1",
            "select name from items where id = 1; select 1",
        ):
            for _ in range(2):
                conn.execute(sql)
        assert hits(proxy) == before
        first = conn.execute("select clock_timestamp() > now() - interval '1 hour' from items where id = 1")
        assert first.fetchone() == (True,)
        conn.execute("begin read write")
        assert name_of(conn, 1) == "item1" and name_of(conn, 1) == "item1"
        conn.execute("commit")
        assert hits(proxy) == before


def test_a_write_straight_to_postgres_is_seen_within_the_bound(pg: PgCluster, tmp_path: Path) -> None:
    with (
        ProxyProcess(cache_config(pg), tmp_path) as proxy,
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        psycopg.connect(direct(pg), autocommit=True) as straight,
    ):
        serving(proxy)
        seen = []
        for n in range(5):
            assert name_of(conn, 7) == name_of(conn, 7)  # cached
            straight.execute("update items set name = %s where id = 7", (f"direct{n}",))
            sent = time.monotonic()
            while name_of(conn, 7) != f"direct{n}":
                assert time.monotonic() - sent < 1.0, "a write that bypassed pgwarden was not seen within 1 s"
                time.sleep(0.005)
            seen.append(time.monotonic() - sent)
        print(f"bypassing writes seen after {max(seen) * 1000:.0f} ms at most")


def test_ddl_and_revoke_drop_answers(pg: PgCluster, tmp_path: Path) -> None:
    config = {**cache_config(pg), "backend_auth": {}}  # each client's statements run as its own role
    with (
        ProxyProcess(config, tmp_path) as proxy,
        psycopg.connect(proxy.dsn(), autocommit=True) as admin,
        psycopg.connect(proxy.dsn(user="alice"), autocommit=True) as alice,
        psycopg.connect(direct(pg), autocommit=True) as straight,
    ):
        serving(proxy)
        assert name_of(alice, 3) == name_of(alice, 3) == "item3"
        admin.execute("revoke select on items from alice")  # through pgwarden
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            name_of(alice, 3)
        straight.execute("grant select on items to alice")
        deadline = time.monotonic() + 2
        while True:
            try:
                name_of(alice, 3)
                break
            except psycopg.errors.InsufficientPrivilege:
                assert time.monotonic() < deadline
        shape = "select * from items where id = 3"
        assert len(admin.execute(shape).fetchone() or ()) == 3
        straight.execute("alter table items add column extra int default 9")  # DDL that bypasses pgwarden
        try:
            deadline = time.monotonic() + 1.0
            while len(admin.execute(shape).fetchone() or ()) != 4:
                assert time.monotonic() < deadline, "DDL that bypassed pgwarden was not seen within 1 s"
        finally:
            straight.execute("alter table items drop column extra")


def test_prepared_statements_are_served_and_kept_current(pg: PgCluster, tmp_path: Path) -> None:
    with ProxyProcess(cache_config(pg), tmp_path) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        serving(proxy)
        before = hits(proxy)
        assert {name_of(conn, 9, prepare=True) for _ in range(5)} == {"item9"}
        assert {name_of(conn, 10, prepare=True) for _ in range(3)} == {"item10"}  # another value: another key
        assert hits(proxy) - before == 6
        conn.execute("update items set name = 'p9' where id = 9", prepare=True)
        assert name_of(conn, 9, prepare=True) == "p9"
        conn.execute("update items set name = 'item9' where id = 9")


def test_tenants_and_masked_roles_never_share_answers(pg: PgCluster, tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    config = cache_config(pg)
    config.update(policies=str(tmp_path / "policy.yaml"), backend_auth={})  # policed sessions log in as themselves
    with ProxyProcess(config, tmp_path) as proxy:
        serving(proxy)
        sql = "select name, email from customers order by id"
        seen = {}
        for user in ("acme_app", "globex_app", "alice", "postgres", "acme_app", "globex_app", "alice", "postgres"):
            with psycopg.connect(proxy.dsn(user=user), autocommit=True) as conn:
                rows = conn.execute(sql).fetchall()
                assert seen.setdefault(user, rows) == rows
        assert seen["acme_app"] == [("Ann", "ann@acme.io")]
        assert seen["globex_app"] == [("Gus", "gus@globex.io")]
        assert seen["postgres"] == [("Ann", "ann@acme.io"), ("Gus", "gus@globex.io")]
        assert [name for name, _ in seen["alice"]] == ["Ann"]  # acme's row, its email masked for the analyst
        assert seen["alice"][0][1] != "ann@acme.io", seen["alice"]
        assert hits(proxy) >= 3
        masked = POLICY.replace("roles: [analyst]}", "roles: [analyst, app]}")  # the app role masked too
        (tmp_path / "policy.yaml").write_text(textwrap.dedent(masked))
        proxy.reload()
        deadline = time.monotonic() + 5
        with psycopg.connect(proxy.dsn(user="acme_app"), autocommit=True) as conn:
            while conn.execute(sql).fetchall() == seen["acme_app"]:  # an answer from before the reload: never again
                assert time.monotonic() < deadline, "the reloaded policy's masks were not applied"
                time.sleep(0.05)
            assert conn.execute(sql).fetchall()[0][1] != "ann@acme.io"


def test_answers_given_under_a_policy_are_counted_as_its_statements(pg: PgCluster, tmp_path: Path) -> None:
    """pgwarden_statements_total counts a policed statement the cache answers as the one PostgreSQL answers."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    config = cache_config(pg)
    config.update(policies=str(tmp_path / "policy.yaml"), backend_auth={})
    with ProxyProcess(config, tmp_path) as proxy:
        serving(proxy)
        rewritten = ("pgwarden_statements_total", (("decision", "rewritten"), ("protocol", "simple")))
        before, hits_before = scrape(proxy).get(rewritten, 0.0), hits(proxy)
        with psycopg.connect(proxy.dsn(user="acme_app"), autocommit=True) as conn:
            for _ in range(3):  # (PQexec: the simple protocol)
                result = conn.pgconn.exec_(b"select name from customers order by id")
                assert result.ntuples == 1 and result.get_value(0, 0) == b"Ann"
        assert hits(proxy) - hits_before == 2
        assert scrape(proxy)[rewritten] - before == 3


def test_two_instances_sharing_redis_never_serve_an_old_answer(pg: PgCluster, tmp_path: Path, prefix: str) -> None:
    config = cache_config(pg, redis=REDIS_URL, key_prefix=prefix)
    with (
        ProxyProcess(config, tmp_path / "a") as one,
        ProxyProcess(
            {
                **config,
                "listen": {"host": "127.0.0.1", "port": free_port()},
                "http": {"host": "127.0.0.1", "port": free_port()},
            },
            tmp_path / "b",
        ) as two,
        psycopg.connect(one.dsn(), autocommit=True) as a,
        psycopg.connect(two.dsn(), autocommit=True) as b,
    ):
        serving(one)
        serving(two)
        for n in range(30):
            assert name_of(b, 11) == name_of(b, 11)
            a.execute("update items set name = %s where id = 11", (f"a{n}",))
            assert name_of(b, 11) == f"a{n}", f"round {n}"
        assert hits(two) >= 25
        assert name_of(a, 12) == name_of(b, 12) == "item12"  # filled by one, served by the other
        assert hits(two) >= 26


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_killed_mid_run_costs_no_wrong_answer_and_no_error(pg: PgCluster, tmp_path: Path) -> None:
    port = free_port()
    server = redis_server(port)
    try:
        config = cache_config(pg, redis=f"redis://127.0.0.1:{port}/0")
        with ProxyProcess(config, tmp_path) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            serving(proxy)
            for n in range(60):
                if n == 20:
                    server.terminate()
                    server.wait(5)
                if n == 40:
                    server = redis_server(port)
                conn.execute("update items set qty = %s where id = 13", (n,))
                assert conn.execute("select qty from items where id = 13").fetchone() == (n,)
                assert conn.execute("select qty from items where id = 13").fetchone() == (n,)
            samples = scrape(proxy)
            assert samples.get(("pgwarden_cache_not_served_total", (("reason", "redis"),)), 0) > 0
    finally:
        server.terminate()
        server.wait(5)


AUDIT_KEY = {"PGWARDEN_AUDIT_KEY": "cache-audit-test-key"}
SAME = ("session", "client", "user", "database", "roles", "bypass", "tenant", "protocol", "kind", "sql", "sqlstate")


def test_every_answer_from_the_cache_is_in_the_audit_trail(pg: PgCluster, tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    config = cache_config(pg)
    audit = {"path": "audit.jsonl", "hmac_key_env": "PGWARDEN_AUDIT_KEY"}
    config.update(policies=str(tmp_path / "policy.yaml"), backend_auth={}, audit=audit)
    asked = {
        ("postgres", "select id from items where id <= 7 order by id"): 7,  # simple protocol, bypass role
        ("postgres", "select name from items where id = %s"): 1,  # extended protocol
        ("acme_app", "select name, email from customers order by id"): 1,  # policed: rewritten for its tenant
    }
    with ProxyProcess(config, tmp_path, env=AUDIT_KEY) as proxy:
        serving(proxy)
        for (user, sql), rows in asked.items():
            with psycopg.connect(proxy.dsn(user=user), autocommit=True) as conn:
                before = hits(proxy)
                answers = [conn.execute(sql, (4,) if "%s" in sql else None).fetchall() for _ in range(2)]
                assert answers[0] == answers[1] and len(answers[0]) == rows
                assert hits(proxy) - before == 1, sql  # the second came from the cache
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # a prepared statement: Bind/Execute/Sync
            sql = "select qty from items where id = %s"
            assert {conn.execute(sql, (15,), prepare=True).fetchone() for _ in range(3)} == {(15,)}  # prepared; cached
    trail = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    prepared = [r for r in trail if r["event"] == "statement" and r["sql"] == "select qty from items where id = $1"]
    assert [r["route"] for r in prepared] == ["primary", "cache", "cache"] and prepared[-1]["rows"] == 1
    for (user, sql), rows in asked.items():
        shape = sql.replace("%s", "$1").replace("7", "?")
        ran, cached = [r for r in trail if r["event"] == "statement" and r["user"] == user and r["sql"] == shape]
        assert ran["route"] == "primary" and cached["route"] == "cache", (ran, cached)
        assert cached["rows"] == ran["rows"] == rows and cached["sqlstate"] == "00000"
        assert {k: cached.get(k) for k in SAME} == {k: ran.get(k) for k in SAME}
        assert ran["time"] <= cached["time"] and cached["duration_ms"] >= 0
        if user == "acme_app":  # the policy's decision, as for the statement that ran
            assert cached["tenant"] == "acme" and cached["decision"] == "rewritten"
            assert (cached["tables"], cached["rewritten_sha256"]) == (ran["tables"], ran["rewritten_sha256"])
        else:
            assert cached["bypass"] is True and cached["decision"] == "allowed"
    verified = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(tmp_path / "audit.jsonl")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **AUDIT_KEY},
    )
    assert verified.returncode == 0 and f"ok: {len(trail)} records" in verified.stdout, verified


def test_an_answer_the_audit_trail_cannot_record_is_refused(pg: PgCluster, tmp_path: Path, prefix: str) -> None:
    """on_failure: block holds for the cache too: a cached answer the trail cannot take is not served (58030)."""
    config = cache_config(pg, redis=REDIS_URL, key_prefix=prefix)
    failing = {
        **config,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "audit": {"path": "/proc/pgwarden-no/audit.jsonl", "block_timeout": 0.5},
    }
    sql = "select name from items where id = 14"
    with ProxyProcess(config, tmp_path / "a") as filler, ProxyProcess(failing, tmp_path / "b") as audited:
        serving(filler)
        with psycopg.connect(audited.dsn(), autocommit=True) as conn:  # (a login starts its WAL consumer)
            deadline = time.monotonic() + 10
            while scrape(audited).get(("pgwarden_cache_serving", (("database", "postgres"),))) != 1:
                assert time.monotonic() < deadline, audited.logs()
                time.sleep(0.05)
            with psycopg.connect(filler.dsn(), autocommit=True) as other:  # filled (in Redis) by the other
                assert other.execute(sql).fetchall() == other.execute(sql).fetchall() == [("item14",)]
            assert hits(filler) > 0
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(sql)
            assert refused.value.sqlstate == "58030", refused.value
            assert hits(audited) == 0  # not even looked up


class Interleaved(RuleBasedStateMachine):
    """Writes through either pgwarden or straight to PostgreSQL, reads through either pgwarden: every read
    through pgwarden equals what PostgreSQL holds at that moment (a write straight to PostgreSQL is
    waited for first, up to the bound)."""

    def __init__(
        self, a: psycopg.Connection, b: psycopg.Connection, straight: psycopg.Connection, values: Iterator[int]
    ) -> None:
        super().__init__()
        self.conns, self.straight = {"a": a, "b": b}, straight
        self.values = values  # (shared by every example: a value written is never written again)

    def truth(self, item: int) -> int:
        row = self.straight.execute("select qty from items where id = %s", (item,)).fetchone()
        assert row is not None
        return row[0]

    @rule(via=st.sampled_from("ab"), item=st.integers(20, 22))
    def write_through_pgwarden(self, via: str, item: int) -> None:
        self.conns[via].execute("update items set qty = %s where id = %s", (next(self.values), item))

    @rule(item=st.integers(20, 22))
    def write_straight(self, item: int) -> None:
        """Every way `read` asks (each instance; unnamed and prepared: two keys) sees it within the bound."""
        value = next(self.values)
        self.straight.execute("update items set qty = %s where id = %s", (value, item))
        deadline = time.monotonic() + 1.0
        for conn in self.conns.values():
            for prepared in (False, True):
                while self._read(conn, item, prepared) != (value,):
                    assert time.monotonic() < deadline, "a write straight to PostgreSQL was not seen within 1 s"
                    time.sleep(0.005)

    @rule(via=st.sampled_from("ab"), item=st.integers(20, 22), prepared=st.booleans())
    def read(self, via: str, item: int, prepared: bool) -> None:
        assert self._read(self.conns[via], item, prepared) == (self.truth(item),)

    @staticmethod
    def _read(conn: psycopg.Connection, item: int, prepared: bool) -> tuple[int, ...] | None:
        return conn.execute("select qty from items where id = %s", (item,), prepare=prepared).fetchone()


def test_interleaved_reads_and_writes_through_two_instances(pg: PgCluster, tmp_path: Path, prefix: str) -> None:
    config = cache_config(pg, redis=REDIS_URL, key_prefix=prefix)
    other = {
        **config,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    with (
        ProxyProcess(config, tmp_path / "a") as one,
        ProxyProcess(other, tmp_path / "b") as two,
        psycopg.connect(one.dsn(), autocommit=True) as a,
        psycopg.connect(two.dsn(), autocommit=True) as b,
        psycopg.connect(direct(pg), autocommit=True) as straight,
    ):
        serving(one)
        serving(two)
        values = itertools.count(1000)
        run_state_machine_as_test(
            lambda: Interleaved(a, b, straight, values),
            settings=settings(max_examples=8, stateful_step_count=15, deadline=None, database=None),
        )
        assert hits(one) + hits(two) > 0
