"""Fixtures for the rewriter tests: two real databases with the test schema (all tenants / acme only)."""

from __future__ import annotations

import psycopg
import pytest

from .schema import DDL, ROWS
from tests.harness import PG_PORT

DSN = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={{}}"
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
    """Connections to a database holding every tenant's rows and one holding only acme's."""
    conns = {}
    for name, parts in DATABASES.items():
        _create(name, parts)
        conns[name] = psycopg.connect(DSN.format(name))
    yield conns["pgwarden_rw_all"], conns["pgwarden_rw_acme"]
    for conn in conns.values():
        conn.close()
    with psycopg.connect(DSN.format("postgres"), autocommit=True) as admin:
        for name in DATABASES:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
