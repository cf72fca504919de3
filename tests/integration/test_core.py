"""The proxy's own behaviour through a real pgwarden and PostgreSQL: pools, reload, shutdown, bad input."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg
import pytest

from proxy.wire import protocol
from tests.harness import PG_PORT, ROOT


def _raw(proxy, payload: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send bytes as a misbehaving client would; return everything the proxy answers until it closes."""
    with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def _errors(data: bytes) -> list[dict[str, str]]:
    framer = protocol.Framer()
    framer.feed(data)
    return [protocol.decode_fields(msg) for kind, msg in framer.messages() if kind == ord("E")]


def _still_serves(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)


def test_pool_exhaustion_answers_53300_naming_the_pool_and_the_client_stays_usable(make_proxy):
    proxy = make_proxy(pool={"size": 1, "query_wait_timeout": 0.5})
    holder = psycopg.connect(proxy.dsn())
    holder.execute("select 1")  # holds the only backend: a transaction is open
    with psycopg.connect(proxy.dsn(), autocommit=True) as waiter:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.TooManyConnections) as info:
            waiter.execute("select 2")
        assert 0.4 < time.monotonic() - started < 5
        assert "postgres/postgres" in str(info.value) and "exhausted" in str(info.value)
        holder.commit()
        assert waiter.execute("select 3").fetchone() == (3,)
    holder.close()


def test_a_client_gets_the_backend_released_by_another(make_proxy):
    proxy = make_proxy(pool={"size": 1, "query_wait_timeout": 10})
    holder = psycopg.connect(proxy.dsn())
    holder.execute("select 1")
    threading.Timer(0.3, holder.commit).start()
    with psycopg.connect(proxy.dsn(), autocommit=True) as waiter:
        assert waiter.execute("select 'served'").fetchone() == ("served",)
    holder.close()


def test_healthz(make_proxy):
    proxy = make_proxy()
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/healthz", timeout=5) as resp:
        body = json.loads(resp.read())
    assert resp.status == 200 and body["status"] == "ok" and body["draining"] is False


def test_sighup_reloads_and_a_bad_file_keeps_the_running_config(make_proxy):
    proxy = make_proxy(auth={"method": "md5", "users": {"app": {"password": "one"}}}, backend_auth={"user": "postgres"})
    with psycopg.connect(proxy.dsn(user="app", password="one")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    config = proxy.config
    config["auth"]["users"]["app"]["password"] = "two"
    proxy.write_config(config)
    proxy.reload()
    time.sleep(0.5)
    with psycopg.connect(proxy.dsn(user="app", password="two")) as conn:
        assert conn.execute("select 2").fetchone() == (2,)
    proxy.config_path.write_text("listen: {port: [not a port]}\npooll: {}\n")
    proxy.reload()
    time.sleep(0.5)
    assert "keeping the running config" in proxy.logs() and "did you mean `pool`" in proxy.logs()
    with psycopg.connect(proxy.dsn(user="app", password="two")) as conn:
        assert conn.execute("select 3").fetchone() == (3,)


def test_sigterm_lets_a_transaction_finish_then_stops(make_proxy):
    proxy = make_proxy(shutdown_timeout=10)
    conn = psycopg.connect(proxy.dsn())
    conn.execute("create temp table t (x int)")  # a transaction is open
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    idle.execute("select 1")
    proxy.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=2)  # no longer accepting
    with pytest.raises(psycopg.OperationalError):
        idle.execute("select 1")  # between transactions: closed at once
    conn.execute("insert into t values (1)")
    assert conn.execute("select count(*) from t").fetchone() == (1,)
    conn.commit()
    assert proxy.proc.wait(10) == 0
    assert "pgwarden stopped" in proxy.logs()
    conn.close()
    idle.close()


def test_garbage_before_startup_gets_a_fatal_error_and_others_are_served(make_proxy):
    proxy = make_proxy()
    answer = _raw(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    errors = _errors(answer)
    assert errors and errors[0]["severity"] == "FATAL" and errors[0]["sqlstate"] == "08P01"
    _still_serves(proxy)


def test_unsupported_protocol_version_is_refused_clearly(make_proxy):
    proxy = make_proxy()
    packet = protocol.startup_message({"user": "postgres"}, version=2 << 16)
    errors = _errors(_raw(proxy, packet))
    assert errors[0]["sqlstate"] == "0A000" and "unsupported frontend protocol 2.0" in errors[0]["message"]


def test_newer_minor_version_gets_negotiate_protocol_version(make_proxy):
    proxy = make_proxy()
    packet = protocol.startup_message({"user": "postgres", "_pq_.fancy": "1"}, version=(3 << 16) | 2)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(packet)
        time.sleep(0.5)
        data = sock.recv(65536)
    framer = protocol.Framer()
    framer.feed(data)
    kinds = {chr(kind): msg for kind, msg in framer.messages()}
    assert "v" in kinds and b"_pq_.fancy" in kinds["v"]
    assert "Z" in kinds  # and the login went on under protocol 3.0


def test_message_over_max_message_size_closes_only_that_client(make_proxy):
    proxy = make_proxy(listen={"max_message_size": 4096})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select '" + "x" * 10_000 + "'")
        assert "max_message_size" in str(info.value)
    _still_serves(proxy)


def test_a_client_that_never_finishes_startup_is_timed_out(make_proxy):
    proxy = make_proxy(listen={"startup_timeout": 0.5})
    started = time.monotonic()
    errors = _errors(_raw(proxy, b"\x00\x00", timeout=5))
    assert time.monotonic() - started < 3
    assert errors and "startup_timeout" in errors[0]["message"]
    _still_serves(proxy)


def _locked_row_is_free(dsn_direct: str) -> bool:
    with psycopg.connect(dsn_direct, autocommit=True) as conn:
        conn.execute("set lock_timeout = '2s'")
        with conn.transaction():
            return conn.execute("select v from pgw_core_lock where k = 1 for update").fetchone() == (0,)


@pytest.fixture
def lock_table():
    direct = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("drop table if exists pgw_core_lock")
        conn.execute("create table pgw_core_lock (k int primary key, v int)")
        conn.execute("insert into pgw_core_lock values (1, 0)")
    yield direct
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("drop table if exists pgw_core_lock")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_client_vanishing_mid_transaction_has_its_transaction_rolled_back(make_proxy, lock_table, mode):
    proxy = make_proxy(pool={"mode": mode, "size": 2})
    conn = psycopg.connect(proxy.dsn())
    conn.execute("update pgw_core_lock set v = 99 where k = 1")  # row locked, not committed
    conn.pgconn.finish()  # vanish without Terminate's ROLLBACK semantics
    time.sleep(0.5)
    assert _locked_row_is_free(lock_table)
    _still_serves(proxy)


def test_a_client_vanishing_mid_copy_leaves_nothing_behind(make_proxy, lock_table):
    proxy = make_proxy(pool={"size": 1, "query_wait_timeout": 5})
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    with conn.cursor() as cur:
        copy = cur.copy("copy pgw_core_lock (k, v) from stdin").__enter__()
        copy.write_row((2, 2))
        sock = socket.socket(fileno=conn.pgconn.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the client is gone mid-COPY
        sock.detach()
    time.sleep(0.5)
    with psycopg.connect(lock_table, autocommit=True) as direct:
        assert direct.execute("select count(*) from pgw_core_lock").fetchone() == (1,)
    _still_serves(proxy)  # the pool's only backend was replaced, not handed over dirty


def test_listen_in_a_larger_query_is_refused_in_transaction_mode_and_the_connection_stays_usable(make_proxy):
    """pgwarden answers a LISTEN sent as a query of its own (proxy/session/notify.py); one inside a
    multi-statement query cannot be split from the rest, and is refused."""
    proxy = make_proxy()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("select 1; LISTEN things")
        assert "transaction pooling" in str(info.value) and info.value.diag.message_hint
        assert conn.execute("select 5").fetchone() == (5,)
        conn.execute("LISTEN things")
        conn.execute("NOTIFY things, 'heard'")
        assert [n.payload for n in conn.notifies(timeout=5, stop_after=1)] == ["heard"]


def test_unknown_database_is_3d000(make_proxy):
    proxy = make_proxy()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(dbname="no_such_db_pgw"))
    assert "no_such_db_pgw" in str(info.value) and "does not exist" in str(info.value)


def test_check_lists_every_config_error_with_line_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("listen:\n  prot: 6432\npool:\n  mode: sometimes\ncache: {ttl_s: -3}\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    err = result.stderr
    assert f"{path}:2: listen.prot: unknown key `prot` (did you mean `port`?)" in err
    assert f"{path}:4: pool.mode:" in err and "'session' or 'transaction'" in err
    assert f"{path}:5: cache.ttl_s:" in err


DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"


@pytest.fixture
def scratch_db():
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute("drop database if exists pgw_core_pool with (force)")
        conn.execute("create database pgw_core_pool")
    yield "pgw_core_pool"
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute("drop database if exists pgw_core_pool with (force)")


def _backends_in(database: str) -> set[int]:
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        rows = conn.execute("select pid from pg_stat_activity where datname = %s", (database,))
        return {pid for (pid,) in rows}


def test_min_idle_opens_backends_and_max_lifetime_replaces_them(make_proxy, scratch_db):
    proxy = make_proxy(pool={"size": 4, "min_idle": 2, "max_lifetime": 2, "idle_timeout": 60})
    with psycopg.connect(proxy.dsn(dbname=scratch_db), autocommit=True) as conn:
        first = conn.execute("select pg_backend_pid()").fetchone()[0]
        time.sleep(1.5)
        opened = _backends_in(scratch_db)
        assert first in opened and len(opened) >= 2, "the janitor keeps min_idle backends open"
        time.sleep(2.5)
        assert not opened & _backends_in(scratch_db), "backends past max_lifetime are closed"
        assert len(_backends_in(scratch_db)) >= 2, "and replaced up to min_idle"
        assert conn.execute("select pg_backend_pid()").fetchone()[0] not in opened
