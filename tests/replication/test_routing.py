"""Read routing through a real pgwarden to a real primary and streaming replicas: where statements land, read-your-writes, lag, a replica stopped."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import psycopg
import pytest

from tests.harness import ProxyProcess, base_config, free_port
from tests.replication.cluster import PRIMARY, ReplicatedCluster

PORT_SQL = "select current_setting('port')::int"  # stable: a read a replica may serve


def routing_config(cluster: ReplicatedCluster, **routing) -> dict:
    primary = cluster.servers[PRIMARY]
    return base_config(
        primary={"host": primary.host, "port": primary.port},
        replicas=[{"host": s.host, "port": s.port} for name, s in cluster.servers.items() if name != PRIMARY],
        routing={"check_interval": 0.1, "check_timeout": 1.0, **routing},
        admin={"users": ["postgres"]},
        pool={"size": 8},
    )


@pytest.fixture(scope="module")
def proxy(replicated, tmp_path_factory):
    with _direct(replicated, PRIMARY) as conn:
        conn.execute("drop table if exists kv; create table kv (k text primary key, v int not null)")
        conn.execute("drop sequence if exists seq; create sequence seq")
    with ProxyProcess(routing_config(replicated), tmp_path_factory.mktemp("routing")) as proc:
        _wait_for(lambda: _replicas_up(proc) == 2, 15, "both replicas in rotation")
        yield proc


def _direct(cluster: ReplicatedCluster, name: str) -> psycopg.Connection:
    server = cluster.servers[name]
    return psycopg.connect(host=server.host, port=server.port, user="postgres", dbname="postgres", autocommit=True)


def _console(proc: ProxyProcess, sql: str) -> list[dict]:
    with psycopg.connect(proc.dsn(dbname="pgwarden"), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def _replicas_up(proc: ProxyProcess) -> int:
    rows = _console(proc, "SHOW REPLICAS")
    return sum(1 for r in rows if r["kind"] == "replica" and r["up"] == "yes" and r["lagging"] == "no")


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        time.sleep(0.05)


def _ports(cluster: ReplicatedCluster, *names: str) -> set[int]:
    return {cluster.servers[n].port for n in names}


def test_reads_land_on_replicas_and_writes_on_the_primary(proxy, replicated):
    replicas, primary = _ports(replicated, "r1", "r2"), replicated.servers[PRIMARY].port
    with psycopg.connect(proxy.dsn()) as conn:
        conn.read_only = True  # BEGIN READ ONLY: the whole transaction on one replica
        first = conn.execute(PORT_SQL).fetchone()[0]
        assert first in replicas and conn.execute(PORT_SQL).fetchone()[0] == first
        conn.commit()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        landed = {conn.execute(PORT_SQL).fetchone()[0] for _ in range(20)}
        assert landed <= replicas and landed, landed
        assert conn.execute("select nextval('seq'), current_setting('port')::int").fetchone()[1] == primary
        row = conn.execute("insert into kv values ('w', 1) on conflict (k) do update set v = 1 returning %s", [1])
        assert row.fetchone() == (1,)
        assert conn.execute(f"/* pgwarden:primary */ {PORT_SQL}").fetchone()[0] == primary
        assert conn.execute(f"{PORT_SQL} from kv for update limit 1").fetchone()[0] == primary
        assert conn.execute("select pg_advisory_lock(7), current_setting('port')::int").fetchone()[1] == primary
        conn.execute("select pg_advisory_unlock(7)")
    with psycopg.connect(proxy.dsn()) as conn:  # a read-write transaction: all of it on the primary
        assert conn.execute(PORT_SQL).fetchone()[0] == primary
        conn.commit()


def test_the_session_override_and_the_metrics(proxy, replicated):
    primary = replicated.servers[PRIMARY].port
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("set pgwarden.route = 'primary'")
        assert {conn.execute(PORT_SQL).fetchone()[0] for _ in range(5)} == {primary}
        conn.execute("reset pgwarden.route")
        _wait_for(lambda: conn.execute(PORT_SQL).fetchone()[0] != primary, 5, "reads on replicas again")
    body = urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5).read().decode()
    assert 'pgwarden_routed_total{route="replica"}' in body and "pgwarden_replica_lag_bytes" in body
    servers = _console(proxy, "SHOW SERVERS")
    assert {r["role"] for r in servers} >= {"primary", "replica"}


def test_read_your_writes_while_a_replica_is_seconds_behind(proxy, replicated):
    """r2 applies WAL 2 s late: without the watermark, about half of these reads would miss."""
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as writer,
        psycopg.connect(proxy.dsn(), autocommit=True) as other,
    ):
        for i in range(12):
            writer.execute("insert into kv values ('ryw', %s) on conflict (k) do update set v = excluded.v", [i])
            assert writer.execute("select v from kv where k = 'ryw'").fetchone() == (i,)  # same session
            assert other.execute("select v from kv where k = 'ryw'").fetchone() == (i,)  # another session
        committed = writer.execute("select v from kv where k = 'ryw'").fetchone()
    assert committed == (11,)


def test_a_lagging_replica_is_skipped_and_comes_back(replicated, tmp_path):
    r2 = replicated.servers["r2"].port
    with ProxyProcess(routing_config(replicated, max_lag_ms=500), tmp_path) as proc:
        _wait_for(lambda: _replicas_up(proc) == 2, 15, "both replicas in rotation")
        with _direct(replicated, PRIMARY) as conn:
            conn.execute("insert into kv values ('lag', 1) on conflict (k) do update set v = kv.v + 1")
        _wait_for(lambda: _lagging(proc, "r2", replicated), 5, "r2 reported lagging")
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            assert r2 not in {conn.execute(PORT_SQL).fetchone()[0] for _ in range(10)}
        _wait_for(lambda: not _lagging(proc, "r2", replicated), 10, "r2 caught up")
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            _wait_for(lambda: conn.execute(PORT_SQL).fetchone()[0] == r2, 5, "a read on r2 again")


def _lagging(proc: ProxyProcess, name: str, cluster: ReplicatedCluster) -> bool:
    server = cluster.servers[name]
    rows = [r for r in _console(proc, "SHOW REPLICAS") if r["server"] == f"{server.host}:{server.port}"]
    return rows[0]["lagging"] == "yes"


def test_stopping_a_replica_moves_its_reads_without_a_client_error(proxy, replicated):
    r1 = replicated.servers["r1"].port
    errors: list[Exception] = []
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    seen.add(conn.execute(PORT_SQL).fetchone()[0])
                except Exception as exc:  # (any error is the failure this test looks for)
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        replicated.stop_server("r1")
        seen.clear()
        time.sleep(1.0)
        assert r1 not in seen or len(seen) > 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        replicated.start_server("r1")
    assert not errors, errors
    rows = {r["server"]: r for r in _console(proxy, "SHOW REPLICAS")}
    assert rows  # the monitor still lists it
    _wait_for(lambda: _replicas_up(proxy) == 2, 20, "r1 back in rotation")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        _wait_for(lambda: conn.execute(PORT_SQL).fetchone()[0] == r1, 10, "a read on r1 again")


def test_show_replicas_reports_every_server(proxy, replicated):
    rows = _console(proxy, "SHOW REPLICAS")
    assert {r["kind"] for r in rows} == {"primary", "replica"}
    primary = next(r for r in rows if r["kind"] == "primary")
    assert primary["role"] == "primary (chosen)" and primary["up"] == "yes"
    assert json.dumps(rows, default=str)  # every value printable


POLICY = """
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme, globex_app: globex}
roles:
  app: {users: [acme_app, globex_app]}
  admin: {users: [postgres], bypass: true}
tables:
  public.notes:
    grants: {app: [select, insert]}
default: deny
"""


def test_policies_apply_the_same_on_replicas(replicated, tmp_path):
    with _direct(replicated, PRIMARY) as conn:
        conn.execute("drop table if exists notes; create table notes (id serial, tenant_id text not null, body text)")
        conn.execute("insert into notes (tenant_id, body) values ('acme', 'a1'), ('globex', 'g1'), ('acme', 'a2')")
        conn.execute("drop role if exists pgw_notes_backend; create role pgw_notes_backend login")
        conn.execute(
            "grant select, insert on notes to pgw_notes_backend; grant usage on sequence notes_id_seq to pgw_notes_backend"
        )
    replicated.wait_replayed("r1", replicated.primary_lsn(), 15)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "notes.yaml").write_text(POLICY)
    config = routing_config(replicated, max_lag_ms=600_000)
    config["policies"] = "policies"
    config["backend_auth"] = {"user": "postgres", "policed": {"user": "pgw_notes_backend"}}
    replicas = _ports(replicated, "r1", "r2")
    with ProxyProcess(config, tmp_path) as proc, psycopg.connect(proc.dsn(user="acme_app"), autocommit=True) as acme:
        rows = acme.execute("select tenant_id, body, current_setting('port')::int from notes order by id").fetchall()
        assert [r[:2] for r in rows] == [("acme", "a1"), ("acme", "a2")]
        assert {r[2] for r in rows} <= replicas  # read on a replica, filtered all the same
        acme.execute("insert into notes (body) values ('a3')")  # the tenant's row, on the primary
        bodies = [r[0] for r in acme.execute("select body from notes order by id").fetchall()]
        assert bodies == ["a1", "a2", "a3"]  # read-your-writes for the tenant
        with psycopg.connect(proc.dsn(user="globex_app"), autocommit=True) as globex:
            assert globex.execute("select body from notes").fetchall() == [("g1",)]


def test_the_audit_trail_names_the_server_each_statement_ran_on(replicated, tmp_path):
    """docs/audit.md: `route` is primary or replica (or cache). Reads routed to a replica say so."""
    config = routing_config(replicated, max_lag_ms=600_000)
    config["audit"] = {"path": "audit.jsonl", "hmac_key_env": "PGWARDEN_AUDIT_KEY"}
    replicas = _ports(replicated, "r1", "r2")
    with (
        ProxyProcess(config, tmp_path, env={"PGWARDEN_AUDIT_KEY": "routing-audit-key"}) as proc,
        psycopg.connect(proc.dsn(), autocommit=True) as conn,
    ):
        _wait_for(lambda: _replicas_up(proc) == 2, 15, "both replicas in rotation")
        assert conn.execute("select current_setting('port')::int as on_replica").fetchone()[0] in replicas
        assert conn.execute("select txid_current() as on_primary").fetchone()[0] > 0
    trail = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    routes = {r["sql"].split(" as ")[-1]: r["route"] for r in trail if r["event"] == "statement"}
    assert routes == {"on_replica": "replica", "on_primary": "primary"}


def test_without_a_usable_replica_reads_fail_when_the_primary_may_not_take_them(replicated, tmp_path):
    config = routing_config(replicated, reads_on_primary=False)
    config["replicas"] = [{"host": "127.0.0.1", "port": free_port()}]  # nothing listens there
    with ProxyProcess(config, tmp_path) as proc, psycopg.connect(proc.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute(PORT_SQL)
        assert info.value.sqlstate == "08006" and "reads_on_primary" in str(info.value)
        assert conn.execute("select txid_current() > 0").fetchone() == (True,)  # writes still run
        rows = {r["server"]: r for r in _console(proc, "SHOW REPLICAS")}
        assert [r["up"] for r in rows.values() if r["kind"] == "replica"] == ["no"]
