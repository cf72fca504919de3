"""Fixtures for the rewriter tests: two real databases with the test schema (all tenants / acme only)."""

from __future__ import annotations

import psycopg
import pytest

from tests import policed_role
from tests.harness import PG_PORT

from .schema import DDL, ROWS

DSN = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={{}}"
ROLE = "pgw_policed_rw"  # its own: the policy tests take back what the shared test role was granted
DATABASES = {"pgwarden_rw_all": ("acme", "globex", "shared"), "pgwarden_rw_acme": ("acme", "shared")}


def _create(name: str, parts: tuple[str, ...]) -> None:
    with psycopg.connect(DSN.format("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(DSN.format(name), autocommit=True) as conn:
        conn.execute(DDL)
        for part in parts:
            conn.execute(ROWS[part])


@pytest.fixture(scope="session")
def databases():
    """Connections to a database holding every tenant's rows, as the least-privilege role policed
    sessions log in as (rewritten SQL must need no more), and one holding only acme's."""
    conns = {}
    for name, parts in DATABASES.items():
        _create(name, parts)
    policed_role.ensure_role(ROLE)
    with psycopg.connect(DSN.format("pgwarden_rw_all"), autocommit=True) as conn:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ROLE}")
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {ROLE}")
    conns["pgwarden_rw_all"] = psycopg.connect(DSN.format("pgwarden_rw_all").replace("user=postgres", f"user={ROLE}"))
    conns["pgwarden_rw_acme"] = psycopg.connect(DSN.format("pgwarden_rw_acme"))
    yield conns["pgwarden_rw_all"], conns["pgwarden_rw_acme"]
    for conn in conns.values():
        conn.close()
    with psycopg.connect(DSN.format("postgres"), autocommit=True) as admin:
        for name in DATABASES:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
