"""LISTEN/NOTIFY under a policy, through the real proxy (both pooling modes): channels are scoped per tenant."""

from __future__ import annotations

import psycopg
import pytest

from tests.policy.conftest import DB, DIRECT, connect


def _heard(conn: psycopg.Connection, timeout: float = 1.0) -> list[tuple[str, str]]:
    return [(n.channel, n.payload) for n in conn.notifies(timeout=timeout, stop_after=10)]


def test_a_tenant_hears_only_its_own_notifications(guarded):
    with (
        connect(guarded, "acme_app") as acme,
        connect(guarded, "globex_app") as globex,
        connect(guarded, "postgres") as bypass,
        connect(guarded, "acme_app") as acme_sender,
    ):
        for conn in (acme, globex, bypass):
            conn.execute("LISTEN jobs")
        acme_sender.execute("NOTIFY jobs, 'for acme'")
        acme_sender.execute("select pg_notify('jobs', 'acme again')")
        globex.execute("NOTIFY jobs, 'for globex'")
        bypass.execute("NOTIFY jobs, 'raw'")
        assert _heard(acme, 3) == [("jobs", "for acme"), ("jobs", "acme again")]
        assert _heard(globex) == [("jobs", "for globex")]  # (its own NOTIFY, as PostgreSQL delivers it)
        assert _heard(bypass) == [("jobs", "raw")]
        assert acme.execute("select count(*) from customers").fetchone() == (2,)


def test_a_raw_notify_never_reaches_a_policed_listener(guarded):
    with (
        connect(guarded, "acme_app") as acme,
        psycopg.connect(DIRECT.replace("dbname=postgres", f"dbname={DB}"), autocommit=True) as pg,
    ):
        acme.execute('LISTEN "Jobs"')
        pg.execute("NOTIFY \"Jobs\", 'raw'")
        pg.execute("select pg_notify('Jobs', 'raw again')")
        assert _heard(acme) == []
        acme.execute("UNLISTEN *")


def test_listen_in_a_transaction_block_applies_at_commit_within_the_tenant(guarded):
    with (
        psycopg.connect(guarded.dsn(user="acme_app", dbname=DB)) as conn,  # (not autocommit: blocks)
        connect(guarded, "acme_app") as acme,
        connect(guarded, "globex_app") as globex,
    ):
        conn.execute("LISTEN jobs")
        acme.execute("NOTIFY jobs, 'before the commit'")  # (PostgreSQL delivers it to no one)
        conn.rollback()
        acme.execute("NOTIFY jobs, 'after the rollback'")
        assert _heard(conn) == []
        conn.execute("LISTEN jobs")
        conn.commit()
        globex.execute("NOTIFY jobs, 'for globex'")
        acme.execute("NOTIFY jobs, 'for acme'")
        assert _heard(conn) == [("jobs", "for acme")]
        conn.execute("UNLISTEN jobs")
        conn.commit()
        acme.execute("NOTIFY jobs, 'unheard'")
        assert _heard(conn) == []
        assert conn.execute("select count(*) from customers").fetchone() == (2,)


def test_listen_without_a_tenant_is_refused(guarded):
    with connect(guarded, "alice") as conn:  # an analyst: no tenant
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("LISTEN jobs")
        assert "tenant" in info.value.diag.message_primary
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("NOTIFY jobs")
        assert conn.execute("select count(*) from countries").fetchone() == (2,)
