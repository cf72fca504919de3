"""Fixtures of the real-client suites; PGWARDEN_CLIENTS_DIRECT=1 aims them at PostgreSQL itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from tests.clients.support import DirectPostgres, direct_dsn


@pytest.fixture
def pg() -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection straight to PostgreSQL (bypassing the proxy)."""
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        yield conn


if os.environ.get("PGWARDEN_CLIENTS_DIRECT"):
    # Runs the same suites straight against PostgreSQL: tells a proxy bug from a test bug.
    @pytest.fixture(scope="module", params=["transaction", "session"])
    def proxy(request) -> DirectPostgres:
        return DirectPostgres(request.param)

    @pytest.fixture(scope="module")
    def tx_proxy() -> DirectPostgres:
        return DirectPostgres("transaction")
