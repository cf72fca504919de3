"""Fixtures of the real-client suites; PGWARDEN_CLIENTS_DIRECT=1 aims them at PostgreSQL itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from tests.clients.support import DirectPostgres, direct_dsn, direct_execute, pool_mode, unique

ITEMS = unique("pgw_psycopg_items")


@pytest.fixture
def pg() -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection straight to PostgreSQL (bypassing the proxy)."""
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def items() -> Iterator[str]:
    """A scratch table for the psycopg suites, created and dropped directly on PostgreSQL."""
    direct_execute(f"DROP TABLE IF EXISTS {ITEMS}")
    direct_execute(
        f"CREATE TABLE {ITEMS} (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),"
        " tags text[], data bytea, at timestamptz)"
    )
    yield ITEMS
    direct_execute(f"DROP TABLE IF EXISTS {ITEMS}")


@pytest.fixture
def fresh_proxy(proxy, make_proxy):
    """A pgwarden of its own in the current `proxy` mode: for tests whose failure could leave state behind."""
    return make_proxy(pool={"mode": pool_mode(proxy), "size": 10})


@pytest.fixture
def fresh_tx_proxy(make_proxy):
    """A transaction-mode pgwarden of its own (pool size 10)."""
    return make_proxy(pool={"mode": "transaction", "size": 10})


if os.environ.get("PGWARDEN_CLIENTS_DIRECT"):
    # Runs the same suites straight against PostgreSQL: tells a proxy bug from a test bug.
    @pytest.fixture(scope="module", params=["transaction", "session"])
    def proxy(request) -> DirectPostgres:
        return DirectPostgres(request.param)

    @pytest.fixture(scope="module")
    def tx_proxy() -> DirectPostgres:
        return DirectPostgres("transaction")

    @pytest.fixture
    def make_proxy():
        return lambda config=None, env=None, **overrides: DirectPostgres(overrides["pool"]["mode"])
