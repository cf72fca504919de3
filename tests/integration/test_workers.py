"""`workers: 2` through a real pgwarden and PostgreSQL: spread, global pool cap, cancel, reload, drain, restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg
import pytest

from tests.harness import PG_HOST, PG_PORT, ROOT, ProxyProcess, base_config

ROLE = "pgwarden_workers_backend"  # the backends' role: pg_stat_activity counts them by it
SIZE = 6


def _direct() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True)


@pytest.fixture(scope="module", autouse=True)
def backend_role():
    with _direct() as conn:
        if not conn.execute("select 1 from pg_roles where rolname = %s", (ROLE,)).fetchone():
            conn.execute(f"create role {ROLE} login")
    yield


def _config(**overrides) -> dict:
    settings = {
        "workers": 2,
        "backend_auth": {"user": ROLE},
        "pool": {"size": SIZE, "query_wait_timeout": 20},
        "admin": {"users": ["postgres"]},
        "shutdown_timeout": 10,
    }
    return base_config(**{**settings, **overrides})


def _healthz(proxy: ProxyProcess) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/healthz", timeout=5) as answer:
        return json.loads(answer.read())


def _start(proxy: ProxyProcess) -> ProxyProcess:
    """Start it and wait until the supervisor has seen both workers start (the port listens as soon as one does)."""
    proxy.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if "supervisor: 2 workers" in proxy.logs() and _healthz(proxy).get("workers") == 2:
                return proxy
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the two workers did not start:\n{proxy.logs()}")


@pytest.fixture
def start_proxy(tmp_path):
    started: list[ProxyProcess] = []

    def start(**overrides) -> ProxyProcess:
        proxy = ProxyProcess(_config(**overrides), tmp_path / f"p{len(started)}")
        started.append(proxy)
        return _start(proxy)

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = _start(ProxyProcess(_config(), tmp_path_factory.mktemp("pgwarden-workers")))
    yield p
    p.stop()


def _worker(conn: psycopg.Connection, count: int = 2) -> int:
    """The worker serving a client: the key pgwarden gave it names the worker (pid % workers)."""
    return conn.info.backend_pid % count


def _on_each_worker(proxy: ProxyProcess, **kwargs) -> list[psycopg.Connection]:
    """One client connection on worker 0 and one on worker 1 (the kernel chooses: connect until both)."""
    found: dict[int, psycopg.Connection] = {}
    spare = []
    for _ in range(60):
        conn = psycopg.connect(proxy.dsn(), **kwargs)
        if _worker(conn) in found:
            spare.append(conn)
        else:
            found[_worker(conn)] = conn
        if len(found) == 2:
            break
    for conn in spare:
        conn.close()
    assert len(found) == 2, "60 connections all landed on one worker"
    return [found[0], found[1]]


def _backends() -> int:
    with _direct() as conn:
        row = conn.execute("select count(*) from pg_stat_activity where usename = %s", (ROLE,)).fetchone()
        assert row is not None
        return row[0]


def test_forty_clients_spread_over_both_workers_and_the_pool_cap_is_global(proxy):
    clients = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(40)]
    per_worker = [sum(_worker(c) == w for c in clients) for w in (0, 1)]
    assert min(per_worker) >= 5, per_worker
    assert _healthz(proxy)["clients"] == 40
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _backends())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    errors: list[Exception] = []

    def run(conn: psycopg.Connection) -> None:
        try:
            assert conn.execute("select pg_sleep(0.2), 1").fetchone() == ("", 1)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    watcher.join()
    assert not errors
    assert SIZE // 2 < peak[0] <= SIZE, f"{peak[0]} backends at most, pool.size is {SIZE}"
    assert _backends() <= SIZE
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5).read().decode()
    assert 'worker="0"' in metrics and 'worker="1"' in metrics
    assert "\npgwarden_primary_up 1.0" in metrics  # measured once, by the worker serving HTTP
    for conn in clients:
        conn.close()


def test_a_cancel_from_a_fresh_connection_cancels_exactly_the_right_query(proxy):
    owners = set()
    for _ in range(12):
        victim = psycopg.connect(proxy.dsn(), autocommit=True)
        bystander = psycopg.connect(proxy.dsn(), autocommit=True)
        owners.add(_worker(victim))
        outcome: dict[str, object] = {}

        def long(conn=victim, outcome=outcome) -> None:
            try:
                conn.execute("select pg_sleep(5)")
                outcome["victim"] = "finished"
            except psycopg.errors.QueryCanceled:
                outcome["victim"] = "cancelled"

        def short(conn=bystander, outcome=outcome) -> None:
            outcome["bystander"] = conn.execute("select pg_sleep(0.8), 7").fetchone()

        threads = [threading.Thread(target=long), threading.Thread(target=short)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.3)
        victim.cancel()  # libpq opens a new connection: the kernel may give it to either worker
        for t in threads:
            t.join(10)
        assert outcome == {"victim": "cancelled", "bystander": ("", 7)}
        assert time.monotonic() - started < 3
        assert victim.execute("select 1").fetchone() == (1,)
        victim.close()
        bystander.close()
    assert owners == {0, 1}


def test_admin_pause_and_resume_act_on_every_worker(proxy):
    clients = _on_each_worker(proxy, autocommit=True)
    with psycopg.connect(proxy.dsn(dbname="pgwarden"), autocommit=True) as admin:
        admin.execute("PAUSE")
        time.sleep(0.3)  # the supervisor relays it to every worker
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda c=c: results.append(c.execute("select 1").fetchone()[0])) for c in clients
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert results == []  # no worker lends a backend
        admin.execute("RESUME")
        for t in threads:
            t.join(5)
        assert results == [1, 1]
    for conn in clients:
        conn.close()


def test_admin_show_and_kill_cover_every_worker(proxy):
    clients = _on_each_worker(proxy, autocommit=True)
    with psycopg.connect(proxy.dsn(dbname="pgwarden"), autocommit=True) as admin:
        notices: list[str] = []
        admin.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        cur = admin.execute("SHOW CLIENTS")
        columns = [c.name for c in cur.description]
        rows = [dict(zip(columns, row)) for row in cur.fetchall()]
        assert columns[0] == "worker" and notices[-1] == "answered by all 2 workers"
        ours = {c.info.backend_pid for c in clients}
        assert {int(r["worker"]) for r in rows if int(r["id"]) in ours} == {0, 1}  # each client, on its worker
        pools = admin.execute("SHOW POOLS").fetchall()
        assert {row[0] for row in pools} == {"0", "1"}
        killed = admin.execute("KILL postgres")
        assert killed.statusmessage == "KILL 2" or int(killed.statusmessage.split()[1]) >= 2
    for conn in clients:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()


def test_sighup_reloads_every_worker(start_proxy):
    proxy = start_proxy(auth={"method": "md5", "users": {"app": {"password": "one"}}})
    config = proxy.config
    config["auth"]["users"]["app"]["password"] = "two"
    proxy.write_config(config)
    proxy.reload()
    time.sleep(0.7)
    seen = set()
    for _ in range(12):
        with psycopg.connect(proxy.dsn(user="app", password="two")) as conn:
            seen.add(_worker(conn))
            assert conn.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(user="app", password="one"))
    assert seen == {0, 1}
    assert proxy.logs().count("reloaded") == 2


def test_sigterm_drains_every_worker_then_the_supervisor_exits(start_proxy):
    proxy = start_proxy()
    in_tx = _on_each_worker(proxy)
    for conn in in_tx:
        conn.execute("create temp table t (x int)")  # a transaction is open on each worker
    proxy.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=2)
    for conn in in_tx:
        conn.execute("insert into t values (1)")
        conn.commit()
        conn.close()
    assert proxy.proc is not None and proxy.proc.wait(10) == 0
    assert proxy.logs().count("pgwarden stopped") == 2


def test_a_worker_that_dies_is_started_again(start_proxy):
    proxy = start_proxy()
    assert proxy.proc is not None
    children = subprocess.run(["pgrep", "-P", str(proxy.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    subprocess.run(["kill", "-9", children[0]], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = subprocess.run(["pgrep", "-P", str(proxy.proc.pid)], capture_output=True, text=True).stdout.split()
        try:
            if len(again) == 2 and children[0] not in again and _healthz(proxy).get("workers") == 2:
                break
        except OSError:  # worker 0 serves HTTP: down until it is started again
            continue
    else:
        raise AssertionError(f"the worker was not started again:\n{proxy.logs()}")
    for _ in range(6):
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("select 3").fetchone() == (3,)


def test_a_second_pgwarden_on_the_same_port_is_refused_not_joined(proxy, tmp_path):
    second = ProxyProcess({**proxy.config, "http": {"port": 0}}, tmp_path)
    second.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(second.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{proxy.port}" in result.stderr and "in use" in result.stderr


def test_a_database_the_workers_pooled_can_be_copied_and_dropped(proxy):
    """CREATE DATABASE ... TEMPLATE and DROP DATABASE want no other session on the database: through
    pgwarden the pools' idle backends on it, in both workers, are replaced first (RECONNECT)."""
    source, copy = f"pgw_src_{time.time_ns()}", f"pgw_copy_{time.time_ns()}"
    with _direct() as pg:
        pg.execute(f"alter role {ROLE} createdb")
        pg.execute(f'create database "{source}" owner {ROLE}')
    try:
        seen: set[int] = set()
        for _ in range(60):  # (until both workers have served it: each keeps an idle backend on it)
            with psycopg.connect(proxy.dsn(dbname=source), autocommit=True) as conn:
                conn.execute("select 1")
                seen.add(_worker(conn))
            if len(seen) == 2:
                break
        assert seen == {0, 1}
        with _direct() as pg:
            idle = pg.execute("select count(*) from pg_stat_activity where datname = %s", (source,)).fetchone()
        assert idle is not None and idle[0] >= 2
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute(f'create database "{copy}" template "{source}"')
            conn.execute(f'drop database "{source}"')
            conn.execute(f'drop database "{copy}"')
    finally:
        with _direct() as pg:
            for name in (source, copy):
                pg.execute(f'drop database if exists "{name}" with (force)')
