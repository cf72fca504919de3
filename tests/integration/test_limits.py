"""`limits:` through real pgwarden processes, PostgreSQL and Redis: 53400 refusals, a rate shared by two instances,
Redis lost mid-run, concurrency, connection quotas and statement_timeout."""

from __future__ import annotations

import shutil
import threading
import time
import uuid

import psycopg
import pytest
import redis

from tests.harness import REDIS_URL, ProxyProcess, base_config, free_port, redis_server, scrape

pytestmark = pytest.mark.integration


def hammer(dsn: str, until: float, out: dict, errors: list) -> None:
    """`select 1` as fast as one client can until `until`: times admitted, 53400s, anything else."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < until:
            try:
                conn.execute("select 1")
                out.setdefault("ok", []).append(time.monotonic())
            except psycopg.errors.ConfigurationLimitExceeded:
                out["limited"] = out.get("limited", 0) + 1
            except Exception as exc:
                errors.append(repr(exc))


def hammer_all(dsns: list[str], seconds: float) -> tuple[list[float], int, list[str]]:
    until = time.monotonic() + seconds
    outs: list[dict] = [{} for _ in dsns]
    errors: list[str] = []
    threads = [threading.Thread(target=hammer, args=(d, until, o, errors)) for d, o in zip(dsns, outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(x for o in outs for x in o.get("ok", [])), sum(o.get("limited", 0) for o in outs), errors


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    config = base_config(
        admin={"users": ["ops"]},
        limits={
            "users": {
                "rate_user": {"statements_per_second": 2, "burst": 2},
                "pipe_user": {"statements_per_second": 2, "burst": 3},
                "conc_user": {"concurrent_statements": 1},
                "cc_user": {"client_connections": 2},
                "to_user": {"statement_timeout_ms": 300},
            }
        },
    )
    with ProxyProcess(config, tmp_path_factory.mktemp("limits")) as running:
        yield running


def test_rate_limit_refuses_with_53400_and_the_connection_stays_usable(proxy):
    with psycopg.connect(proxy.dsn(user="rate_user"), autocommit=True) as conn:
        time.sleep(1.1)  # a full bucket
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select %s::int", (2,)).fetchone() == (2,)  # extended protocol: counted too
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            conn.execute("select 3")
        assert info.value.sqlstate == "53400"
        assert info.value.diag.message_primary == "rate limit for user 'rate_user' exceeded: 2 statements per second"
        assert "retry in" in (info.value.diag.message_hint or "")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("select %s::int", (4,))
        time.sleep(0.6)  # one more statement's worth
        assert conn.execute("select 5").fetchone() == (5,)
        time.sleep(1.1)
        conn.execute("begin")  # (BEGIN, COMMIT and ROLLBACK are statements too)
        conn.execute("select 6")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("select 7")
        time.sleep(0.6)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):  # aborted, as by an error
            conn.execute("select 8")
        time.sleep(0.6)
        conn.execute("rollback")
        time.sleep(0.6)
        assert conn.execute("select 9").fetchone() == (9,)
    samples = scrape(proxy)
    key = ("pgwarden_limit_rejections_total", (("kind", "user"), ("limit", "statements_per_second")))
    assert samples[key] >= 3
    show = admin(proxy, "SHOW LIMITS")
    row = next(line for line in show if line[1] == "rate_user")
    assert row[:4] == ["user", "rate_user", "2.0", "2"]
    assert "statements_per_second=" in row[-1]
    print("\n".join("|".join(line) for line in show))


def test_a_refusal_in_a_pipeline_aborts_it_as_an_error_would(proxy):
    table = f"limits_pipe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as owner:
        owner.execute(f"create table {table} (n int)")
    try:
        with psycopg.connect(proxy.dsn(user="pipe_user"), autocommit=True) as conn:
            time.sleep(1.6)  # a full bucket: 3
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                with conn.pipeline():  # one Sync for all four: one implicit transaction
                    for n in range(4):
                        conn.execute(f"insert into {table} values (%s)", (n,))
            time.sleep(0.6)
            assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)  # none committed
            time.sleep(0.6)
            with conn.pipeline():
                conn.execute(f"insert into {table} values (%s)", (9,))
            time.sleep(0.6)
            assert conn.execute(f"select n from {table}").fetchall() == [(9,)]
    finally:
        with psycopg.connect(proxy.dsn(), autocommit=True) as owner:
            owner.execute(f"drop table {table}")


def admin(proxy: ProxyProcess, command: str) -> list[list[str]]:
    with psycopg.connect(proxy.dsn(user="ops", dbname="pgwarden"), autocommit=True) as conn:
        cur = conn.execute(command)
        return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]


def test_concurrent_statements_are_refused_over_the_limit(proxy):
    with (
        psycopg.connect(proxy.dsn(user="conc_user"), autocommit=True) as a,
        psycopg.connect(proxy.dsn(user="conc_user"), autocommit=True) as b,
    ):
        sleeper = threading.Thread(target=a.execute, args=("select pg_sleep(0.8)",))
        sleeper.start()
        time.sleep(0.3)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            b.execute("select 1")
        assert "concurrency limit for user 'conc_user' exceeded: 1 concurrent statements" in str(info.value)
        sleeper.join()
        assert b.execute("select 2").fetchone() == (2,)  # the place was given back at ReadyForQuery
        with a.transaction():  # idle in a transaction holds no place
            a.execute("select 3")
            assert b.execute("select 4").fetchone() == (4,)


def test_client_connections_are_refused_at_login_over_the_limit(proxy):
    first = psycopg.connect(proxy.dsn(user="cc_user"), autocommit=True)
    second = psycopg.connect(proxy.dsn(user="cc_user"), autocommit=True)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(user="cc_user"), autocommit=True)
    assert "connection limit for user 'cc_user' exceeded: 2 client connections" in str(info.value)
    first.close()
    time.sleep(0.1)
    with psycopg.connect(proxy.dsn(user="cc_user"), autocommit=True) as third:
        assert third.execute("select 1").fetchone() == (1,)
    second.close()


def test_statement_timeout_is_the_default_and_the_ceiling(proxy):
    # asked for none at startup: the cap instead
    with psycopg.connect(proxy.dsn(user="to_user"), options="-c statement_timeout=0", autocommit=True) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("300ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(1)")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            conn.execute("set statement_timeout = 0")
        assert "at most 300 ms" in str(info.value)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("set statement_timeout = '5s'")
        conn.execute("set statement_timeout = '100ms'")
        assert conn.execute("show statement_timeout").fetchone() == ("100ms",)
        conn.execute("reset statement_timeout")
        conn.execute("select 1")
        assert conn.execute("show statement_timeout").fetchone() == ("300ms",)  # the cap again, not 0


def test_the_timeout_ceiling_holds_for_a_named_prepared_set_under_session_pooling(tmp_path):
    """A SET sent as a named Parse is judged by its query, not by its statement's name."""
    limits = {"users": {"to_user": {"statement_timeout_ms": 300}}}
    with ProxyProcess(base_config(pool={"mode": "session"}, limits=limits), tmp_path) as proxy:
        with psycopg.connect(proxy.dsn(user="to_user"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                conn.execute("set statement_timeout = 0", prepare=True)
            conn.execute("set statement_timeout = '100ms'", prepare=True)
            assert conn.execute("show statement_timeout").fetchone() == ("100ms",)


def test_a_rate_shared_by_two_instances_holds_within_ten_percent(tmp_path):
    prefix = f"pgwarden-test:{uuid.uuid4().hex}:"
    limits = {"redis": REDIS_URL, "key_prefix": prefix, "users": {"*": {"statements_per_second": 50, "burst": 10}}}
    one = ProxyProcess(base_config(limits=limits), tmp_path / "one").start()
    two = ProxyProcess(base_config(limits=limits), tmp_path / "two").start()
    try:
        admitted, limited, errors = hammer_all([one.dsn(user="shared"), two.dsn(user="shared")], 2.0)
        assert errors == []
        span = admitted[-1] - admitted[0]
        expected = 50 * span + 10
        print(f"admitted {len(admitted)} in {span:.2f}s (expected {expected:.0f}); refused {limited}")
        assert abs(len(admitted) - expected) <= 0.1 * expected
        assert limited > len(admitted)  # both hammered well past the rate
        for proxy in (one, two):
            samples = scrape(proxy)
            assert samples.get(("pgwarden_limit_fallbacks_total", ()), 0) == 0
            assert samples[("pgwarden_limit_rejections_total", (("kind", "user"), ("limit", "statements_per_second")))]
    finally:
        one.stop()
        two.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_lost_mid_run_falls_back_to_each_process(tmp_path):
    port = free_port()
    server = redis_server(port)
    try:
        limits = {"redis": f"redis://127.0.0.1:{port}/0", "users": {"*": {"statements_per_second": 50, "burst": 10}}}
        proxy = ProxyProcess(base_config(limits=limits), tmp_path / "p").start()
        try:
            killer = threading.Timer(0.7, server.terminate)
            killer.start()
            admitted, limited, errors = hammer_all([proxy.dsn(user="lost")], 2.0)
            killer.join()
            assert errors == []  # nothing but 53400: no client saw Redis fail
            assert limited > 0
            after = [t for t in admitted if t > admitted[0] + 1.0]
            assert len(after) >= 20  # still admitted at the rate, by this process alone
            samples = scrape(proxy)
            assert samples[("pgwarden_limit_fallbacks_total", ())] > 0
            span = admitted[-1] - admitted[0]
            assert len(admitted) <= 50 * span + 2 * 10 + 5  # one bucket in Redis, then one here: at most two bursts
        finally:
            proxy.stop()
    finally:
        server.terminate()
        server.wait(5)
