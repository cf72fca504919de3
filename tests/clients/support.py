"""Helpers for the real-client suites: direct PostgreSQL access for setup, scratch databases."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness import PG_HOST, PG_PORT, ProxyProcess


def unique(name: str) -> str:
    """`name` made unique to this test run, so that concurrent runs of the suites never collide."""
    return f"{name}_{os.getpid()}"


def direct_dsn(dbname: str = "postgres") -> str:
    """A DSN for PostgreSQL itself (not the proxy), for setup and cleanup."""
    return f"host={PG_HOST} port={PG_PORT} user=postgres dbname={dbname} sslmode=disable"


def pool_mode(proxy) -> str:
    """`transaction` or `session`: the pooling mode of a proxy fixture."""
    return proxy.config["pool"]["mode"]


def skip_if_direct(proxy) -> None:
    """Skip a check of pgwarden's own behaviour when the suites run straight against PostgreSQL."""
    if isinstance(proxy, DirectPostgres):
        pytest.skip("checks pgwarden's own behaviour; PGWARDEN_CLIENTS_DIRECT aims at PostgreSQL")


def xfail_in_transaction_mode(request, proxy, reason: str) -> None:
    """Mark the running test as a known proxy bug, but only when it runs under transaction pooling."""
    if pool_mode(proxy) == "transaction":
        request.applymarker(pytest.mark.xfail(strict=False, reason=reason))


def connect(proxy, **kwargs) -> psycopg.Connection:
    """A psycopg connection through a proxy fixture."""
    return psycopg.connect(proxy.dsn(connect_timeout=10), **kwargs)


def direct_execute(sql: str, dbname: str = "postgres") -> None:
    """Run one statement straight on PostgreSQL, in autocommit."""
    with psycopg.connect(direct_dsn(dbname), autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A fresh database created directly on PostgreSQL, dropped (with its sessions) afterwards."""
    direct_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    direct_execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        direct_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class DirectPostgres(ProxyProcess):
    """Stands in for a proxy fixture but points at PostgreSQL itself (PGWARDEN_CLIENTS_DIRECT=1); never started."""

    def __init__(self, mode: str) -> None:
        super().__init__(
            {"listen": {"host": PG_HOST, "port": PG_PORT}, "pool": {"mode": mode, "size": 10}}, Path(os.devnull)
        )
