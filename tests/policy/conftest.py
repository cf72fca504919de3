"""A shop database with two tenants, a policy for it, and pgwarden in front with that policy."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests import policed_role
from tests.harness import PG_PORT, ProxyProcess, base_config

DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"
DB = "pgw_policy"


@contextmanager
def made_by_owner(create: str, drop: str) -> Iterator[None]:
    """Objects the database owner makes straight in PostgreSQL (never through pgwarden), then drops."""
    shop = DIRECT.replace("dbname=postgres", f"dbname={DB}")
    with psycopg.connect(shop, autocommit=True) as c:
        c.execute(create)
    yield
    with psycopg.connect(shop, autocommit=True) as c:
        c.execute(drop)


TOKEN_KEY = "test-tenant-key-0123456789"

SCHEMA = """
create table customers (id int primary key, tenant_id text not null, name text,
                        email text unique, ssn text, phone text, born date);
create table orders (id int primary key, tenant_id text not null, customer_id int,
                     total numeric(10,2));
create table countries (code text primary key, name text);
create table secrets (id int, tenant_id text, secret text);
"""

DATA = """
insert into customers values
  (1, 'acme', 'Ann', 'ann@acme.io', '111-11-1111', '555-0101', '1980-05-17'),
  (2, 'acme', 'Bob', 'bob@acme.io', '222-22-2222', '555-0102', '1990-01-02'),
  (3, 'globex', 'Gus', 'gus@globex.io', '333-33-3333', '555-0103', '1975-12-31');
insert into orders values (10, 'acme', 1, 100.00), (11, 'acme', 2, 50.50), (12, 'globex', 3, 999.99);
insert into countries values ('us', 'United States'), ('fr', 'France');
insert into secrets values (1, 'acme', 's3cr3t');
"""

POLICY = """
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme, globex_app: globex}
    - setting: pgwarden.tenant
      trusted_users: [saas_backend]
    - signed_setting: pgwarden.tenant_token
      key_env: PGWARDEN_TEST_TENANT_KEY
roles:
  app: {users: [acme_app, globex_app, saas_backend, token_user]}
  analyst: {users: [alice]}
  admin: {users: [postgres], bypass: true}
tables:
  public.customers:
    grants: {app: [select, insert, update, delete], analyst: [select]}
    masks:
      email: {mask: email, roles: [analyst]}
      ssn: {mask: redact, roles: [analyst, app]}
      phone: {mask: partial, keep_last: 4, roles: [analyst]}
  public.orders:
    grants: {app: [select, insert, update, delete], analyst: [select]}
  public.countries:
    tenant_column: null
    grants: {"*": [select]}
default: deny
"""
POLICED_ROLE = policed_role.role_for(POLICY)  # the role policed sessions of POLICY log in as


def reset_data() -> None:
    """The shop's rows as they started (tables and other objects stay)."""
    with psycopg.connect(DIRECT.replace("dbname=postgres", f"dbname={DB}"), autocommit=True) as c:
        c.execute("truncate customers, orders, countries, secrets")
        c.execute(DATA)


@pytest.fixture(scope="session")
def shop_db():
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    with psycopg.connect(DIRECT.replace("dbname=postgres", f"dbname={DB}"), autocommit=True) as c:
        c.execute(SCHEMA)
    reset_data()
    yield DB
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")


def policy_proxy(workdir: Path, mode: str, policy: str = POLICY, env: dict | None = None, **overrides) -> ProxyProcess:
    """pgwarden with `policy`; its policed sessions log in as the least-privilege test role,
    granted (in every test database) what `pgwarden init --policy` grants for this policy."""
    workdir.mkdir(parents=True, exist_ok=True)
    if "backend_auth" not in overrides:
        overrides["backend_auth"] = policed_role.backend_auth(policed_role.grant(policy))
    (workdir / "policies").mkdir(exist_ok=True)
    (workdir / "policies" / "shop.yaml").write_text(textwrap.dedent(policy))
    config = base_config(pool={"mode": mode, "size": 5}, policies="policies", **overrides)
    return ProxyProcess(config, workdir, env={"PGWARDEN_TEST_TENANT_KEY": TOKEN_KEY, **(env or {})}).start()


@pytest.fixture(scope="module", params=["transaction", "session"])
def guarded(request, shop_db, tmp_path_factory):
    """pgwarden with the shop policy, in each pooling mode."""
    proxy = policy_proxy(tmp_path_factory.mktemp(f"policy-{request.param}"), request.param)
    yield proxy
    proxy.stop()


def connect(proxy: ProxyProcess, user: str, **kw) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user=user, dbname=DB), autocommit=True, **kw)
