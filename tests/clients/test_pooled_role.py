"""SET ROLE and ParameterStatus under transaction pooling, with real clients whose backends change between transactions."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors

from tests.clients.support import connect, direct_execute, unique
from tests.harness import ROOT

pytestmark = pytest.mark.timeout(90)

ROLE = unique("pgw_assumed")
WHO = "SELECT current_user::text, pg_backend_pid(), pg_sleep(0.005)::text"


@pytest.fixture
def role() -> Iterator[str]:
    direct_execute(f"DROP ROLE IF EXISTS {ROLE}")
    direct_execute(f"CREATE ROLE {ROLE}")
    yield ROLE
    direct_execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture
def pool3(make_proxy):
    """Transaction pooling over 3 backends: clients are served by different ones in turn."""
    return make_proxy(pool={"mode": "transaction", "size": 3})


def _worker(proxy, n: int, role: str) -> tuple[list, set]:
    """Odd workers SET ROLE (then RESET it); even ones never do. Each checks who it runs as."""
    wrong, pids = [], set()
    with connect(proxy, autocommit=True) as conn:
        expected = "postgres"
        if n % 2:
            conn.execute(f"SET ROLE {role}")
            expected = role
        for i in range(12):
            if n % 2 and i == 8:
                conn.execute("RESET ROLE")
                expected = "postgres"
            user, pid, _ = conn.execute(WHO).fetchone()
            pids.add(pid)
            if user != expected:
                wrong.append((n, i, expected, user))
    return wrong, pids


def test_set_role_is_kept_across_backends_and_never_reaches_another_client(pool3, role):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: _worker(pool3, n, role), range(8)))
    assert [w for r in results for w in r[0]] == []
    assert max(len(r[1]) for r in results) > 1  # the clients did change backend


def test_set_role_in_transactions_follows_commit_and_rollback(pool3, role):
    with connect(pool3, autocommit=True) as conn, connect(pool3, autocommit=True) as other:
        conn.execute("BEGIN")
        conn.execute(f"SET ROLE {role}")
        assert conn.execute(WHO).fetchone()[0] == role
        conn.execute("ROLLBACK")
        for _ in range(3):
            assert conn.execute(WHO).fetchone()[0] == "postgres"
            assert other.execute(WHO).fetchone()[0] == "postgres"
        with conn.transaction():
            conn.execute(f"SET ROLE {role}")
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT s")
        conn.execute("RESET ROLE")
        conn.execute("ROLLBACK TO s")
        conn.execute("COMMIT")
        conn.execute("SET ROLE NONE; SET ROLE " + role)  # two statements in one query
        for _ in range(4):
            assert conn.execute(WHO).fetchone()[0] == role
            assert other.execute(WHO).fetchone()[0] == "postgres"


def test_reset_all_keeps_the_role_and_discard_all_drops_it(pool3, role):
    """As PostgreSQL: RESET ALL leaves the role (GUC_NO_RESET_ALL); DISCARD ALL resets it."""
    with connect(pool3, autocommit=True) as conn, connect(pool3, autocommit=True) as other:
        conn.execute(f"SET ROLE {role}")
        conn.execute("RESET ALL")
        for _ in range(3):
            assert conn.execute(WHO).fetchone()[0] == role
            other.execute(WHO)
        conn.execute("DISCARD ALL")
        for _ in range(3):
            assert conn.execute(WHO).fetchone()[0] == "postgres"
            other.execute(WHO)


def test_a_client_leaving_mid_transaction_leaves_no_role_or_setting(make_proxy, role):
    """Its ROLLBACK undoes a SET the proxy saw: the backend is made clean, never trusted as it was."""
    proxy = make_proxy(pool={"mode": "transaction", "size": 2})
    with connect(proxy, autocommit=True) as keep, connect(proxy, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        conn.execute("SET standard_conforming_strings = off")
        first = conn.execute(WHO).fetchone()[1]
        keep.execute("BEGIN")
        assert keep.execute(WHO).fetchone()[1] == first  # holds conn's backend: the next client gets the other
        leaving = connect(proxy)
        leaving.execute(f"SET ROLE {role}")  # in a transaction (not autocommit)
        leaving.execute("SET standard_conforming_strings = off")
        leaving.close()  # without COMMIT: pgwarden rolls it back
        user, pid, _ = conn.execute(WHO).fetchone()
        scs = conn.execute("SELECT current_setting('standard_conforming_strings')").fetchone()[0]
        assert pid != first and (user, scs) == (role, "off")
        keep.execute("COMMIT")


def test_role_replay_that_fails_closes_the_client(pool3, role):
    """A role dropped meanwhile: the client is closed, its statement never runs as the pool's role."""
    direct_execute(f"CREATE ROLE {ROLE}_gone")
    try:
        with connect(pool3, autocommit=True) as conn, connect(pool3, autocommit=True) as other:
            conn.execute(f"SET ROLE {ROLE}_gone")
            hold = [other, connect(pool3, autocommit=True)]
            for c in hold:
                c.execute("BEGIN")  # the two other backends are busy: conn's next statement moves
            direct_execute(f"DROP ROLE {ROLE}_gone")
            with pytest.raises(psycopg.OperationalError):
                conn.execute(WHO).fetchone()
            hold[1].close()
    finally:
        direct_execute(f"DROP ROLE IF EXISTS {ROLE}_gone")


def test_session_authorization_is_still_refused(pool3):
    with connect(pool3, autocommit=True) as conn:
        with pytest.raises(errors.FeatureNotSupported, match="SET SESSION AUTHORIZATION"):
            conn.execute("SET SESSION AUTHORIZATION postgres")
        assert conn.execute(WHO).fetchone()[0] == "postgres"


# --- ParameterStatus ----------------------------------------------------------------------------


def _churn(proxy, stop: threading.Event) -> None:
    with connect(proxy, autocommit=True) as conn:
        while not stop.is_set():
            conn.execute("SET standard_conforming_strings = on; SET TimeZone = 'UTC'; SELECT pg_sleep(0.003)")


def test_reported_parameters_stay_right_across_backends(pool3, role):
    stop = threading.Event()
    churners = [threading.Thread(target=_churn, args=(pool3, stop)) for _ in range(3)]
    for t in churners:
        t.start()
    try:
        with connect(pool3, autocommit=True) as conn:
            info = conn.info
            conn.execute("SET standard_conforming_strings = off")
            conn.execute("SET TimeZone = 'Asia/Tokyo'")
            conn.execute(f"SET ROLE {role}")
            for _ in range(10):
                scs, zone, su = conn.execute(
                    "SELECT current_setting('standard_conforming_strings'), current_setting('TimeZone'),"
                    " current_setting('is_superuser')"
                ).fetchone()
                assert (scs, zone, su) == ("off", "Asia/Tokyo", "off")
                assert info.parameter_status("standard_conforming_strings") == "off"
                assert info.parameter_status("TimeZone") == "Asia/Tokyo"
                assert info.parameter_status("is_superuser") == "off"
                assert conn.execute("SELECT %s::text", ["a\\b"]).fetchone()[0] == "a\\b"  # quoting follows it
            conn.execute("RESET ALL")
            conn.execute("RESET ROLE")
            for _ in range(5):
                conn.execute("SELECT 1")
                assert info.parameter_status("standard_conforming_strings") == "on"
                assert info.parameter_status("is_superuser") == "on"
    finally:
        stop.set()
        for t in churners:
            t.join()


def test_startup_options_are_reported_at_login(pool3):
    """`options=-c TimeZone=...` is shown at login, as PostgreSQL shows it, and stays."""
    with psycopg.connect(pool3.dsn(options="-c\\ TimeZone=Asia/Tokyo"), autocommit=True) as conn:
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        for _ in range(4):
            assert conn.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "Asia/Tokyo"
            assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"


def test_a_replay_tells_the_client_what_postgresql_would_report(pool3):
    """A value PostgreSQL spells its own way (`utc` reported as `UTC`) reaches the client after a replay."""
    with psycopg.connect(pool3.dsn(options="-c\\ TimeZone=utc"), autocommit=True) as conn:
        conn.execute("SELECT 1")
        assert conn.info.parameter_status("TimeZone") == "UTC"


def test_django_assume_role_under_transaction_pooling(pool3, role):
    """Django's OPTIONS["assume_role"] (SET ROLE after connecting) holds for every transaction, on every backend."""
    stop = threading.Event()
    churners = [threading.Thread(target=_churn, args=(pool3, stop)) for _ in range(3)]
    for t in churners:
        t.start()
    try:
        args = [sys.executable, "-m", "tests.django_app.assume_role", pool3.host, str(pool3.port), "postgres", role]
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        for t in churners:
            t.join()
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    assert seen["users"] == [role] and seen["backends"] > 1
