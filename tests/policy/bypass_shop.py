"""A second shop database for the bypass suite: globex's rows stored first, plus views, partitions, functions."""

from __future__ import annotations

import psycopg

from tests.harness import PG_PORT
from tests.policy.conftest import POLICY, SCHEMA

DB = "pgw_bypass"
DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={{}}"

EXTRA_SCHEMA = """
alter table customers add constraint name_not_x check (name <> 'x');
create view v_customers as select id, tenant_id, name, ssn from customers;
create view v_unlisted as select id, tenant_id, name, ssn from customers;
create table events (id int, tenant_id text not null, body text) partition by list (tenant_id);
create table events_acme partition of events for values in ('acme');
create table events_globex partition of events for values in ('globex');
create function all_customers() returns setof customers language sql security definer
  as 'select * from public.customers';
create function order_total(n numeric) returns numeric language sql immutable as 'select n * 2';
-- not in functions.allow, and named like built-ins: PostgreSQL picks them for varchar arguments
create function public.upper(varchar) returns text language sql security definer
  as $$ select string_agg(name || ':' || ssn, ',') from public.customers $$;
create function public.length(varchar) returns int language sql security definer
  as $$ select count(*)::int from public.customers $$;
create function public.leak_op(int, int) returns text language sql security definer
  as $$ select string_agg(name || ':' || ssn, ',') from public.customers $$;
create operator public.=== (leftarg = int, rightarg = int, function = public.leak_op);
-- a common pattern: a trigger announcing new rows on one channel for every tenant
create function notify_order() returns trigger language plpgsql
  as $$ begin perform pg_notify('orders_changed', row_to_json(new)::text); return new; end $$;
create trigger orders_notify after insert on orders for each row execute function notify_order();
create schema evil;
create table evil.customers (id int, tenant_id text, name text, email text, ssn text, phone text, born date);
insert into evil.customers values (3, 'globex', 'Gus', 'gus@globex.io', '333-33-3333', '555-0103', null);
"""

# globex first: a predicate evaluated before the tenant filter would meet Gus first
DATA = """
insert into customers values
  (3, 'globex', 'Gus', 'gus@globex.io', '333-33-3333', '555-0103', '1975-12-31'),
  (1, 'acme', 'Ann', 'ann@acme.io', '111-11-1111', '555-0101', '1980-05-17'),
  (2, 'acme', 'Bob', 'bob@acme.io', '222-22-2222', '555-0102', '1990-01-02');
insert into orders values (12, 'globex', 3, 999.99), (10, 'acme', 1, 100.00), (11, 'acme', 2, 50.50);
insert into countries values ('us', 'United States'), ('fr', 'France');
insert into secrets values (1, 'globex', 's3cr3t');
insert into events values (1, 'globex', 'globex-event'), (2, 'acme', 'acme-event');
analyze;
"""

POLICY_EXTRA = """
  public.v_customers:
    grants: {app: [select]}
    masks:
      ssn: {mask: redact, roles: [app]}
  public.events:
    grants: {app: [select]}
functions:
  allow: [public.order_total]
"""

# the shop policy's tables come last before `default:`, so the extra tables and `functions:` follow them
# acme_analyst: tenant acme with the analyst's masks (email, phone and ssn) where acme_app sees email and phone
BYPASS_POLICY = (
    POLICY.replace("\ndefault: deny", POLICY_EXTRA.rstrip() + "\ndefault: deny")
    .replace("{acme_app: acme, globex_app: globex}", "{acme_app: acme, globex_app: globex, acme_analyst: acme}")
    .replace("analyst: {users: [alice]}", "analyst: {users: [alice, acme_analyst]}")
)
assert "acme_analyst: acme" in BYPASS_POLICY and "[alice, acme_analyst]" in BYPASS_POLICY


def create() -> str:
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    with psycopg.connect(DIRECT.format(DB), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(EXTRA_SCHEMA)
        conn.execute(DATA)
    return DB


def drop() -> None:
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
