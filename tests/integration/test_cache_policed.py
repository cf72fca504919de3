"""The result cache for policed sessions on the extended protocol (Parse/Bind/Execute, and prepared statements
under transaction pooling): answers served per tenant and role, never the client's own unrewritten statement
left behind for a later Bind, kept current across a policy reload, counted and audited as the statement that ran."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from tests import rawwire
from tests.harness import ProxyProcess, scrape
from tests.integration.test_cache import AUDIT_KEY, POLICY, cache_config, hits, pg, serving  # noqa: F401 (fixture)
from tests.pgcluster import PgCluster
from tests.rawwire import Wire

SQL = "select name, email from customers where id > %s order by id"
WIRE_SQL = SQL.replace("%s", "$1")
ACME, GLOBEX = [("Ann", "ann@acme.io")], [("Gus", "gus@globex.io")]
MASKED = POLICY.replace("roles: [analyst]}", "roles: [analyst, app]}")  # the app role masked too
TRUSTED = POLICY.replace(  # saas may SET the tenant
    "alice: acme}\n", "alice: acme}\n    - setting: pgwarden.tenant\n      trusted_users: [saas]\n"
).replace("users: [acme_app, globex_app]", "users: [acme_app, globex_app, saas]")


@pytest.fixture(scope="module", autouse=True)
def saas(pg: PgCluster) -> None:
    pg.psql("create role saas login; grant select on items, customers to saas")


def policed(pg: PgCluster, tmp_path: Path, policy: str = POLICY, **extra) -> ProxyProcess:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(policy))
    config = cache_config(pg)
    config.update(policies=str(tmp_path / "policy.yaml"), backend_auth={}, **extra)  # (they log in as themselves)
    return ProxyProcess(config, tmp_path, env=AUDIT_KEY)


def unnamed_bind(conn: psycopg.Connection, value: bytes) -> list[tuple[bytes | None, ...]]:
    """Bind/Describe/Execute/Sync of the client's unnamed statement, as it stands (no Parse)."""
    result = conn.pgconn.exec_prepared(b"", [value])
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    return [tuple(result.get_value(r, c) for c in range(result.nfields)) for r in range(result.ntuples)]


def test_tenants_and_masked_roles_get_their_own_answers_on_the_extended_protocol(pg: PgCluster, tmp_path: Path) -> None:
    """Each policed user asks the same text, unnamed and prepared, twice over: every answer is its own
    tenant's (the analyst's masked), and every repeat is a hit."""
    with policed(pg, tmp_path) as proxy:
        serving(proxy)
        before, seen = hits(proxy), {}
        for prepare in (False, True):
            for user in ("acme_app", "globex_app", "alice") * 2:
                with psycopg.connect(proxy.dsn(user=user), autocommit=True) as conn:
                    for _ in range(3):
                        assert seen.setdefault(user, conn.execute(SQL, (0,), prepare=prepare).fetchall())
                        assert conn.execute(SQL, (0,), prepare=prepare).fetchall() == seen[user]
        assert (seen["acme_app"], seen["globex_app"]) == (ACME, GLOBEX)
        assert seen["alice"][0][0] == "Ann" and seen["alice"][0][1] != "ann@acme.io", seen["alice"]
        # per mode and user: 6 executions on the first connection (1 miss), 6 on the second (all hits)
        assert hits(proxy) - before == 2 * 3 * 11


@pytest.mark.parametrize("fresh_backend", [False, True])
def test_a_later_bind_of_the_unnamed_statement_runs_it_rewritten_for_the_tenant(
    pg: PgCluster, tmp_path: Path, fresh_backend: bool
) -> None:
    """A hit leaves the client's unnamed statement defined without a backend seeing it: the next Bind of it
    alone prepares the policed Parse (the tenant's filter and masks), never the client's text as sent."""
    with policed(pg, tmp_path) as proxy, psycopg.connect(proxy.dsn(user="acme_app"), autocommit=True) as conn:
        serving(proxy)
        assert conn.execute(SQL, (0,), prepare=False).fetchall() == ACME  # (stored)
        before = hits(proxy)
        assert conn.execute(SQL, (0,), prepare=False).fetchall() == ACME
        assert hits(proxy) - before == 1
        if fresh_backend:  # another statement, then the Bind alone: under transaction pooling, any backend
            assert conn.execute("select 1", prepare=False).fetchone() == (1,)
            conn.execute(SQL, (0,), prepare=False)  # (a hit again: the unnamed statement is SQL's once more)
        assert unnamed_bind(conn, b"0") == [(b"Ann", b"ann@acme.io")]


def test_answers_and_statements_follow_a_policy_reload(pg: PgCluster, tmp_path: Path) -> None:
    """After a reload that masks the app role, no answer from before it is served, whether the client
    sends its Parse again, binds the unnamed statement the cache answered, or binds a prepared one."""
    with policed(pg, tmp_path) as proxy, psycopg.connect(proxy.dsn(user="acme_app"), autocommit=True) as conn:
        serving(proxy)
        cursor = conn.cursor()
        for _ in range(2):
            assert cursor.execute(SQL, (0,), prepare=True).fetchall() == ACME  # (prepared: s named by psycopg)
            assert conn.execute(SQL, (0,), prepare=False).fetchall() == ACME
        (tmp_path / "policy.yaml").write_text(textwrap.dedent(MASKED))
        proxy.reload()
        deadline = time.monotonic() + 5
        while conn.execute(SQL, (0,), prepare=False).fetchall() == ACME:
            assert time.monotonic() < deadline, "the reloaded policy's masks were not applied"
            time.sleep(0.05)
        assert unnamed_bind(conn, b"0")[0][1] != b"ann@acme.io"
        assert cursor.execute(SQL, (0,), prepare=True).fetchall()[0][1] != "ann@acme.io"
        assert conn.execute(SQL, (0,), prepare=False).fetchall()[0][1] != "ann@acme.io"


def test_policed_extended_answers_are_counted_and_audited_as_the_statement_that_ran(
    pg: PgCluster, tmp_path: Path
) -> None:
    """pgwarden_statements_total counts each policed Parse the cache answers as one it forwards; every
    execution is in the audit trail with the client's text, the tenant and the policy's decision."""
    audit = {"path": "audit.jsonl", "hmac_key_env": "PGWARDEN_AUDIT_KEY"}
    with policed(pg, tmp_path, audit=audit) as proxy:
        serving(proxy)
        rewritten = ("pgwarden_statements_total", (("decision", "rewritten"), ("protocol", "extended")))
        counted, before = scrape(proxy).get(rewritten, 0.0), hits(proxy)
        with psycopg.connect(proxy.dsn(user="acme_app"), autocommit=True) as conn:
            for prepare in (False, True):
                for _ in range(3):
                    assert conn.execute(SQL, (0,), prepare=prepare).fetchall() == ACME
            assert unnamed_bind(conn, b"0") == [(b"Ann", b"ann@acme.io")]  # (the unnamed statement a hit defined)
        assert hits(proxy) - before == 2 + 2
        assert scrape(proxy)[rewritten] - counted == 3 + 1  # each unnamed Parse, and the named one once
    trail = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    ran = [r for r in trail if r["event"] == "statement" and r["sql"] == WIRE_SQL]
    assert [r["route"] for r in ran] == ["primary", "cache", "cache", "primary", "cache", "cache", "primary"], ran
    assert {(r["tenant"], r["decision"], r["rows"], r["protocol"]) for r in ran} == {
        ("acme", "rewritten", 1, "extended")
    }
    assert len({json.dumps(r["tables"]) + r["rewritten_sha256"] for r in ran}) == 1


def test_a_tenant_change_after_a_hit_binds_the_unnamed_statement_for_the_new_tenant(
    pg: PgCluster, tmp_path: Path
) -> None:
    """The guard learns what a hit left in the unnamed statement: after a trusted user's tenant change,
    a Bind of it alone is prepared again for the new tenant (not the one the answer was given for)."""
    assert "trusted_users: [saas]" in TRUSTED
    with policed(pg, tmp_path, TRUSTED) as proxy, psycopg.connect(proxy.dsn(user="saas"), autocommit=True) as conn:
        serving(proxy)
        conn.execute("set pgwarden.tenant = 'acme'")
        assert conn.execute(SQL, (0,), prepare=False).fetchall() == ACME  # (stored)
        conn.execute("set pgwarden.tenant = 'globex'")
        assert conn.execute("select %s::int", (0,), prepare=False).fetchone() == (0,)  # (the unnamed, for globex)
        conn.execute("set pgwarden.tenant = 'acme'")
        before = hits(proxy)
        assert conn.execute(SQL, (0,), prepare=False).fetchall() == ACME
        assert hits(proxy) - before == 1
        conn.execute("set pgwarden.tenant = 'globex'")
        assert unnamed_bind(conn, b"0") == [(b"Gus", b"gus@globex.io")]
        conn.execute("set pgwarden.tenant = 'acme'")  # a prepared statement: its Bind is a hit only while current
        assert {tuple(conn.execute(SQL, (0,), prepare=True).fetchall()) for _ in range(3)} == {tuple(ACME)}
        conn.execute("set pgwarden.tenant = 'globex'")
        assert conn.execute(SQL, (0,), prepare=True).fetchall() == GLOBEX


@pytest.mark.parametrize("hit", [False, True])
@pytest.mark.parametrize("change", ["reload", "tenant"])
def test_after_a_close_of_the_unnamed_statement_a_bind_of_it_finds_none(
    pg: PgCluster, tmp_path: Path, hit: bool, change: str
) -> None:
    """Close of the unnamed statement, a reload that masks the app role (or a trusted user's tenant
    change), then a Bind of it alone: under transaction pooling pgwarden prepared its remembered Parse
    again, the rewrite for the old policy or tenant, while the guard had nothing left to check (found
    2026-12-06, with or without a hit). It finds no statement now, as PostgreSQL would say."""
    user, policy = ("saas", TRUSTED) if change == "tenant" else ("acme_app", POLICY)
    with policed(pg, tmp_path, policy) as proxy:
        serving(proxy)
        w = Wire(proxy.host, proxy.port, user, "postgres")
        try:
            if change == "tenant":
                assert w.send(rawwire.query("set pgwarden.tenant = 'acme'")).errors == []
            for _ in range(2 if hit else 1):
                ran = w.send(rawwire.parse("", WIRE_SQL), rawwire.bind("", [b"0"]), rawwire.execute(), rawwire.SYNC)
                assert ran.rows == [["Ann", "ann@acme.io"]]
            assert w.send(rawwire.close_statement(""), rawwire.SYNC).errors == []
            if change == "tenant":
                assert w.send(rawwire.query("set pgwarden.tenant = 'globex'")).errors == []
            else:
                (tmp_path / "policy.yaml").write_text(textwrap.dedent(MASKED))
                proxy.reload()
                with psycopg.connect(proxy.dsn(user="globex_app"), autocommit=True) as other:
                    deadline = time.monotonic() + 5
                    while other.execute(SQL, (0,), prepare=False).fetchall() == GLOBEX:
                        assert time.monotonic() < deadline, "the reloaded policy's masks were not applied"
                        time.sleep(0.05)
            after = w.send(rawwire.bind("", [b"0"]), rawwire.execute(), rawwire.SYNC)
            assert after.errors == ["26000"] and after.rows == [], after
        finally:
            w.close()
