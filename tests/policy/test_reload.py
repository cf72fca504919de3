"""Policy hot reload (on file change and SIGHUP), a bad file keeping the running policy, monitor mode."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests import policed_role
from tests.policy.conftest import DB, DIRECT, POLICY, connect, policy_proxy


def _direct(sql: str) -> None:
    with psycopg.connect(DIRECT.replace("dbname=postgres", f"dbname={DB}"), autocommit=True) as conn:
        conn.execute(sql)


def _wait_for(predicate, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _can_read_countries(proxy) -> bool:
    with connect(proxy, "acme_app") as conn:
        try:
            conn.execute("select count(*) from countries")
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False


def test_a_policy_file_change_applies_without_restart_and_a_bad_one_is_kept_out(shop_db, tmp_path):
    proxy = policy_proxy(tmp_path / "p", "transaction")
    try:
        assert _can_read_countries(proxy)
        policy_file = tmp_path / "p" / "policies" / "shop.yaml"
        without = POLICY.replace('    grants: {"*": [select]}\n', "    grants: {admin: [select]}\n")
        assert without != POLICY
        policy_file.write_text(without)
        assert _wait_for(lambda: not _can_read_countries(proxy)), "the revoked grant took effect"
        policy_file.write_text(without + "\ntables: [broken\n")
        time.sleep(2)
        assert "keeping the running config" in proxy.logs()
        assert not _can_read_countries(proxy)  # still the last good policy
        policy_file.write_text(POLICY)
        proxy.reload()
        assert _wait_for(lambda: _can_read_countries(proxy))
    finally:
        proxy.stop()


def test_monitor_mode_runs_the_original_and_logs_what_enforce_would_do(shop_db, tmp_path):
    monitor = POLICY + "mode: monitor\n"
    proxy = policy_proxy(tmp_path / "m", "transaction", policy=monitor)
    try:
        with connect(proxy, "acme_app") as conn:
            # the original runs, as the policed role: PostgreSQL itself refuses what it has no grant for
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("select count(*) from secrets")
            _direct(f"grant select on secrets to {policed_role.role_for(monitor)}")
            assert conn.execute("select count(*) from secrets").fetchone() == (1,)
            assert conn.execute("select count(*) from customers").fetchone() == (3,)
        log = proxy.logs()
        assert "monitor mode: would refuse" in log and "public.secrets" in log
        assert "monitor mode: would rewrite" in log
    finally:
        proxy.stop()
