"""What pgwarden believes the session's search_path is must never be the default while PostgreSQL's is
another: its checks of functions and operators resolve names on the path it believes. Each sequence of
transaction control, savepoints, failures and SETs is run; then PostgreSQL's own SHOW is the oracle.

The schema `shadow` (usable by PUBLIC, made by the database owner as an extension would be) holds an
operator `=` that is always true and a SECURITY DEFINER `lower(text)` that returns globex's customers.
On a path that puts it first, pgwarden must refuse both (it does when it knows the path). A COMMIT of a
failed block recovered by ROLLBACK TO in the same Query or Sync made pgwarden restore the old path while
PostgreSQL committed the new one (found 2026-12-06): acme_app then read and updated globex's rows."""

from __future__ import annotations

import pytest

from tests.policy.conftest import DB, made_by_owner, reset_data
from tests.rawwire import FLUSH, SYNC, Wire, bind, close_statement, execute, parse, query

SHADOW = """
drop schema if exists shadow cascade;
create schema shadow;
grant usage on schema shadow to public;
create function shadow.lower(text) returns text language sql security definer as $$
  select string_agg(name || ' ' || email || ' ' || ssn, '; ') from public.customers
  where tenant_id operator(pg_catalog.=) 'globex' $$;
create function shadow.anyeq(text, text) returns boolean language sql immutable as $$ select true $$;
create operator shadow.= (leftarg = text, rightarg = text, function = shadow.anyeq);
"""
PATH = "SET search_path = shadow, pg_catalog, public"


@pytest.fixture(scope="module", autouse=True)
def shadow(shop_db):
    with made_by_owner(SHADOW, "drop schema if exists shadow cascade"):
        yield


def extended(*sqls: str) -> list[bytes]:
    return [m for sql in sqls for m in (parse("", sql), bind("", []), execute())]


BEGIN, SAVEPOINT, FAIL, SET = query("BEGIN"), query("SAVEPOINT a"), query("SELECT 1/0"), query(PATH)
SEQUENCES = {  # batches, each sent and answered before the next
    "implicit, failed": [[query(f"{PATH}; SELECT 1/0")]],
    "implicit, failed, extended": [[*extended(PATH, "SELECT 1/0"), SYNC]],
    "extended, Flush, a failed Query": [[*extended(PATH), FLUSH, FAIL, SYNC]],
    "extended, two Syncs": [[*extended(PATH), SYNC, *extended("SELECT 1/0"), SYNC]],
    "COMMIT of a failed block": [[BEGIN], [query(PATH)], [FAIL], [query("COMMIT")]],
    "COMMIT of a failed block, one Query": [[query(f"BEGIN; {PATH}; SELECT 1/0; COMMIT")], [query("ROLLBACK")]],
    "RELEASE, then ROLLBACK TO": [[BEGIN], [SAVEPOINT], [query(PATH)], [query("RELEASE a")], [query("ROLLBACK TO a")]],
    "ROLLBACK TO, COMMIT": [[BEGIN], [SAVEPOINT], [query(PATH)], [query("ROLLBACK TO a")], [query("COMMIT")]],
    "recovered, COMMIT": [[BEGIN], [SAVEPOINT], [FAIL], [query(f"ROLLBACK TO a; {PATH}; COMMIT")]],
    "recovered, RELEASE, COMMIT": [[BEGIN], [SAVEPOINT], [FAIL], [query(f"ROLLBACK TO a; {PATH}; RELEASE a; COMMIT")]],
    "recovered, COMMIT AND CHAIN": [[BEGIN], [SAVEPOINT], [FAIL], [query(f"ROLLBACK TO a; {PATH}; COMMIT AND CHAIN")]],
    "recovered, COMMIT, extended": [[BEGIN], [SAVEPOINT], [FAIL], [*extended("ROLLBACK TO a", PATH, "COMMIT"), SYNC]],
    "recovered, COMMIT, pipelined": [[BEGIN, SAVEPOINT, FAIL, query(f"ROLLBACK TO a; {PATH}; COMMIT")]],
    "pipelined, each its own Query": [[BEGIN, SAVEPOINT, FAIL, query("ROLLBACK TO a"), query(PATH), query("COMMIT")]],
    "extended block, Syncs": [
        [*extended("BEGIN", "SAVEPOINT a"), SYNC],
        [*extended("SELECT 1/0"), SYNC],
        [*extended("ROLLBACK TO a", PATH), SYNC],
        [*extended("COMMIT"), SYNC],
    ],
    "SET, Flush, a failure, COMMIT": [
        [*extended("BEGIN", PATH), FLUSH, *extended("SELECT 1/0"), SYNC],
        [query("COMMIT")],
    ],
    # A SET, RESET or DISCARD sent as a Parse runs only when a portal of it is executed (found 2026-12-06:
    # pgwarden applied it at the Parse, so a RESET never executed made it judge under the default path).
    "a RESET only parsed": [[SET], [parse("", "RESET search_path"), SYNC]],
    "a SET only parsed": [[SET], [parse("", "SET search_path = public"), SYNC]],
    "SET TO DEFAULT only parsed": [[SET], [parse("", "SET search_path TO DEFAULT"), SYNC]],
    "DISCARD ALL only parsed": [[SET], [parse("", "DISCARD ALL"), SYNC]],
    "a named RESET only parsed": [[SET], [parse("r1", "RESET search_path"), SYNC]],
    "a RESET parsed and bound": [[SET], [parse("", "RESET search_path"), bind("", []), SYNC]],
    "a RESET bound to a portal": [[SET], [parse("", "RESET search_path"), bind("", [], portal="p"), SYNC]],
    "a RESET replaced before it ran": [[SET], [parse("", "RESET search_path"), *extended("SELECT 1"), SYNC]],
    "a RESET parsed, Flush, Close": [[SET], [parse("", "RESET search_path"), FLUSH], [close_statement(""), SYNC]],
    "the shadow path only parsed": [[parse("", PATH), SYNC]],
    "a named SET run after a RESET": [
        [parse("s1", PATH), SYNC],
        [query("RESET search_path")],
        [bind("s1", []), execute(), SYNC],
    ],
    "a named RESET run twice around a SET": [
        [parse("r2", "RESET search_path"), bind("r2", []), execute(), SYNC],
        [SET],
        [bind("r2", []), execute(), SYNC],
        [SET],
    ],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_pgwarden_knows_the_path_postgres_has(guarded, name: str) -> None:
    reset_data()
    w = Wire(guarded.host, guarded.port, "acme_app", DB)
    try:
        for batch in SEQUENCES[name]:
            w.send(*batch)
        w.send(query("ROLLBACK"))  # (a block left open ends: the path is what was committed)
        shown = w.send(query("SHOW search_path")).rows
        orders = w.send(query("SELECT id, tenant_id FROM orders ORDER BY id"))
        leaked = w.send(query("SELECT lower('X')"))
    finally:
        w.close()
    if "shadow" in str(shown):  # PostgreSQL has the path: pgwarden must judge under it
        assert orders.errors == ["42501"] and leaked.errors == ["42501"], (name, orders, leaked)
    else:
        assert ["12", "globex"] not in orders.rows, (name, orders)
    reset_data()


@pytest.mark.parametrize("name", ["recovered, COMMIT", "a RESET only parsed"])
def test_the_backend_reaches_the_next_client_with_the_path_pgwarden_knows(guarded, name: str) -> None:
    """Under transaction pooling the backend goes back to the pool: the next clients get their own path."""
    w = Wire(guarded.host, guarded.port, "acme_app", DB)
    for batch in SEQUENCES[name]:
        w.send(*batch)
    w.close()
    for user in ("globex_app", "alice"):
        v = Wire(guarded.host, guarded.port, user, DB)
        try:
            assert v.send(query("SHOW search_path")).rows == [['"$user", public']], user
            assert ["10", "acme"] not in v.send(query("SELECT id, tenant_id FROM orders ORDER BY id")).rows
        finally:
            v.close()
