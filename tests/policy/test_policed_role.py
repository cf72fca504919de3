"""Policed sessions never run as a superuser: they log in as a least-privilege role, or are refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import NamedTuple

import asyncpg
import psycopg
import pytest

from tests import policed_role
from tests.harness import PG_HOST, PG_PORT, ROOT
from tests.policy.conftest import DB, POLICED_ROLE, POLICY, connect, policy_proxy

DIRECT = f"host={PG_HOST} port={PG_PORT} user=postgres dbname={{}}"
WHO = "select current_user, current_setting('is_superuser')"


def _direct(sql: str, db: str = DB) -> None:
    with psycopg.connect(DIRECT.format(db), autocommit=True) as conn:
        conn.execute(sql)


def _role(name: str, attributes: str = "") -> str:
    """A login role made afresh for one test, granted what the shop policy needs."""
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        if conn.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone():
            for db in (DB, "postgres"):
                with psycopg.connect(DIRECT.format(db), autocommit=True) as c:
                    c.execute(f"reassign owned by {name} to postgres")
                    c.execute(f"drop owned by {name}")
            conn.execute(f"drop role {name}")
        conn.execute(f"create role {name} login {attributes}")
    policed_role.grant(POLICY, [DB], role=name)
    return name


class Refusal(NamedTuple):
    """A login pgwarden refused, as asyncpg reports it."""

    sqlstate: str
    message: str
    hint: str


def _refused(proxy, user: str = "acme_app") -> Refusal:
    async def run() -> None:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=user, database=DB, ssl=False)
        try:
            await conn.fetch("select name from customers")
        finally:
            await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(run())
    err = info.value
    return Refusal(err.sqlstate, err.message, err.hint or "")


def _assert_bypass_works(proxy) -> None:
    with connect(proxy, "postgres") as conn:
        assert conn.execute(WHO).fetchone() == ("postgres", "on")
        assert conn.execute("select count(*) from secrets").fetchone() == (1,)


# --- the configured role serves policed sessions --------------------------------------------------


def test_policed_sessions_run_as_the_policed_role(guarded):
    for user in ("acme_app", "alice", "saas_backend"):
        with connect(guarded, user) as conn:
            assert conn.execute(WHO).fetchone() == (POLICED_ROLE, "off")
            assert conn.execute(WHO, prepare=True).fetchone() == (POLICED_ROLE, "off")
            assert conn.execute("select session_user").fetchone() == (POLICED_ROLE,)
            assert conn.info.parameter_status("is_superuser") == "off"
    _assert_bypass_works(guarded)


def test_policed_sessions_run_as_the_policed_role_with_asyncpg(guarded):
    async def run() -> tuple:
        conn = await asyncpg.connect(host=guarded.host, port=guarded.port, user="acme_app", database=DB, ssl=False)
        try:
            row = await conn.fetchrow(WHO)
            names = [r["name"] for r in await conn.fetch("select name from customers order by id")]
            return tuple(row), names
        finally:
            await conn.close()

    assert asyncio.run(run()) == ((POLICED_ROLE, "off"), ["Ann", "Bob"])


ESCALATIONS = [
    "set role postgres",
    'SET ROLE "postgres"',
    "set local role postgres",
    "set session authorization postgres",
    "set session authorization default",
    "reset role",
    "reset session authorization",
    "reset all",
    "select set_config('role', 'postgres', false)",
    "select pg_catalog.set_config('session_authorization', 'postgres', false)",
    "set role pg_read_all_data",
    "set role pg_execute_server_program",
]


@pytest.mark.parametrize("prepare", [False, True])
def test_no_statement_turns_a_policed_session_into_another_role(guarded, prepare):
    with connect(guarded, "acme_app") as conn:
        for sql in ESCALATIONS:
            try:
                conn.execute(sql, prepare=prepare)
            except psycopg.Error:
                pass
            assert conn.execute(WHO, prepare=prepare).fetchone() == (POLICED_ROLE, "off"), sql
        conn.execute("begin")
        for sql in ESCALATIONS[:3]:
            with pytest.raises(psycopg.Error):
                conn.execute(sql, prepare=prepare)
            conn.execute("rollback")
            conn.execute("begin")
        assert conn.execute(WHO).fetchone() == (POLICED_ROLE, "off")
        conn.execute("rollback")


def test_policed_and_bypass_sessions_never_share_a_backend(guarded):
    """Interleaved on the same proxy, each statement runs as its own session's role."""
    with (
        connect(guarded, "acme_app") as acme,
        connect(guarded, "postgres") as admin,
        connect(guarded, "nobody_in_the_policy") as nobody,
    ):
        for _ in range(10):
            assert acme.execute(WHO).fetchone() == (POLICED_ROLE, "off")
            assert admin.execute(WHO).fetchone() == ("postgres", "on")
            assert nobody.execute(WHO).fetchone() == (POLICED_ROLE, "off")
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in (acme, nobody)}
        assert admin.execute("select pg_backend_pid()").fetchone()[0] not in pids
        assert admin.execute(
            "select count(*) from pg_stat_activity where usename = %s and pid = any(%s)", (POLICED_ROLE, list(pids))
        ).fetchone() == (len(pids),)


def test_postgresql_itself_refuses_what_the_policy_does_not_grant(guarded):
    """Defence in depth: directly, the policed role cannot read what the policy refuses."""
    with psycopg.connect(DIRECT.format(DB).replace("user=postgres", f"user={POLICED_ROLE}"), autocommit=True) as conn:
        for sql in (
            "select * from secrets",
            "select * from public.secrets",
            "truncate customers",
            "create table public.mine (x int)",
            "set role postgres",
            "alter table customers add column x int",
            "select pg_read_file('PG_VERSION')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


# --- an unfit role: policed sessions refused, bypass sessions unaffected ------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_superuser_policed_role_is_refused(shop_db, tmp_path, mode):
    proxy = policy_proxy(tmp_path, mode, backend_auth={"user": "postgres", "policed": {"user": "postgres"}})
    try:
        for user in ("acme_app", "alice", "nobody_in_the_policy"):
            err = _refused(proxy, user)
            assert err.sqlstate == "42501", err
            assert 'backend role "postgres" is a superuser' in err.message
            assert "backend_auth.policed.user" in err.hint and "pgwarden init --policy" in err.hint
        _assert_bypass_works(proxy)
    finally:
        proxy.stop()


def test_without_a_policed_role_a_superuser_backend_user_is_refused(shop_db, tmp_path):
    """The old default (everyone logs in as backend_auth.user = postgres) now fails closed."""
    proxy = policy_proxy(tmp_path, "transaction", backend_auth={"user": "postgres"})
    try:
        err = _refused(proxy)
        assert err.sqlstate == "42501" and "is a superuser" in err.message, err
        _assert_bypass_works(proxy)
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "case", ["bypassrls", "owner", "owner-through-membership", "member-of-superuser", "create-on-public"]
)
def test_an_unfit_policed_role_is_refused(shop_db, tmp_path, case):
    role = _role("pgw_unfit", "bypassrls" if case == "bypassrls" else "")
    expected = {
        "bypassrls": "has BYPASSRLS",
        "owner": "owns public.secrets",
        "owner-through-membership": "owns public.secrets",
        "member-of-superuser": "is a member of superuser or BYPASSRLS role(s) pgw_super",
        "create-on-public": "may create objects in schema(s) public",
    }[case]
    if case == "owner":
        _direct(f"alter table secrets owner to {role}")
    elif case == "owner-through-membership":
        _role("pgw_owners")
        _direct(f"grant pgw_owners to {role}")
        _direct("alter table secrets owner to pgw_owners")
    elif case == "create-on-public":
        _direct(f"grant create on schema public to {role}")
    elif case == "member-of-superuser":
        _role("pgw_super", "superuser")
        _direct(f"grant pgw_super to {role}")
    proxy = policy_proxy(tmp_path, "transaction", backend_auth={"user": "postgres", "policed": {"user": role}})
    try:
        err = _refused(proxy)
        assert err.sqlstate == "42501" and expected in err.message, err
        assert "pgwarden never runs a policed session's statements as such a role" in err.message
        _assert_bypass_works(proxy)
    finally:
        proxy.stop()
        _direct("alter table secrets owner to postgres")
        _direct(f"revoke create on schema public from {role}")


def test_a_role_made_owner_at_run_time_is_cut_off(shop_db, tmp_path):
    """DDL a bypass role runs through pgwarden makes it read the schema, and check the role, again."""
    role = _role("pgw_later")
    proxy = policy_proxy(tmp_path, "transaction", backend_auth={"user": "postgres", "policed": {"user": role}})
    try:
        with connect(proxy, "acme_app") as policed:
            assert policed.execute(WHO).fetchone() == (role, "off")
            with connect(proxy, "postgres") as admin:
                admin.execute(f"alter table secrets owner to {role}")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    policed.execute("select 1")
                except psycopg.Error as exc:
                    assert "owns public.secrets" in str(exc), exc
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the policed session kept running as a table owner")
        err = _refused(proxy)
        assert err.sqlstate == "42501" and "owns public.secrets" in err.message
        _assert_bypass_works(proxy)
    finally:
        _direct("alter table secrets owner to postgres")
        proxy.stop()


# --- pgwarden check --live ------------------------------------------------------------------------


def _check(proxy) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(proxy.config_path), "--live", "--database", DB],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "backend_auth, reason",
    [
        ({"user": "postgres", "policed": {"user": "postgres"}}, 'backend role "postgres" is a superuser'),
        ({"user": "postgres"}, 'backend role "postgres" is a superuser'),
        ({"user": "postgres", "policed": {"user": "pgw_checked"}}, "owns public.orders"),
    ],
)
def test_check_live_refuses_an_unfit_policed_role(shop_db, tmp_path, backend_auth, reason):
    _role("pgw_checked")
    _direct("alter table orders owner to pgw_checked")
    proxy = policy_proxy(tmp_path, "transaction", backend_auth=backend_auth)
    proxy.stop()
    try:
        result = _check(proxy)
    finally:
        _direct("alter table orders owner to postgres")
    assert result.returncode == 1, result.stdout
    assert reason in result.stderr and "backend_auth.policed.user" in result.stderr, result.stderr


def test_check_live_accepts_the_least_privilege_role(shop_db, tmp_path):
    proxy = policy_proxy(tmp_path, "transaction")
    proxy.stop()
    result = _check(proxy)
    assert result.returncode == 0, result.stderr


def test_slow_policed_statements_are_explained_as_the_policed_role(shop_db, tmp_path):
    """The slow log's EXPLAIN plans the client's own text (planning folds immutable functions):
    for a policed session it connects as the policed role, never as backend_auth.user."""
    proxy = policy_proxy(tmp_path, "transaction", slow_query={"threshold_ms": 100, "explain": True})
    try:
        with connect(proxy, "acme_app") as conn:
            conn.execute("select pg_sleep(0.3), count(*) from countries")
        deadline, users = time.monotonic() + 10, []
        with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as direct:
            while time.monotonic() < deadline and not users:
                users = direct.execute(
                    "select usename from pg_stat_activity where application_name = 'pgwarden-explain'"
                ).fetchall()
                time.sleep(0.1)
        assert users == [(POLICED_ROLE,)]
        assert '"plan"' in proxy.logs() or "Plan" in proxy.logs()
    finally:
        proxy.stop()


def test_a_fixed_role_serves_again_after_a_reload(shop_db, tmp_path):
    role = _role("pgw_fixed")
    _direct(f"alter table secrets owner to {role}")
    proxy = policy_proxy(tmp_path, "session", backend_auth={"user": "postgres", "policed": {"user": role}})
    try:
        assert "owns public.secrets" in _refused(proxy).message
        _direct("alter table secrets owner to postgres")
        assert "owns public.secrets" in _refused(proxy).message  # remembered until the next schema read
        proxy.reload()
        deadline = time.monotonic() + 10
        while True:
            try:
                with connect(proxy, "acme_app") as conn:
                    assert conn.execute(WHO).fetchone() == (role, "off")
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        _direct("alter table secrets owner to postgres")
        proxy.stop()


@pytest.mark.parametrize("option", ["-c role=postgres", "-c session_authorization=postgres", "-crole=pg_read_all_data"])
def test_startup_options_cannot_change_the_policed_role(guarded, option):
    try:
        conn = psycopg.connect(guarded.dsn(user="acme_app", dbname=DB, options=f"'{option}'"), autocommit=True)
    except psycopg.OperationalError as exc:
        assert "refused" in str(exc) or "permission denied" in str(exc), exc
        return
    with conn:
        assert conn.execute(WHO).fetchone() == (POLICED_ROLE, "off")
