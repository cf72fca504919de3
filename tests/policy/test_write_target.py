"""A write reading its own target row: masked columns stay masked however the row is reached.

Each attack is sent by acme's app role (ssn masked for it) through the real proxy in both
pooling modes, over the simple and the extended protocol. It must be refused (42501 with a
hint, the connection staying usable) or run without returning, storing or letting one infer
an SSN or another tenant's row; PostgreSQL is checked directly afterwards.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.harness import PG_PORT
from tests.policy.conftest import DB, connect, reset_data

DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={DB}"
SSNS = ("111-11-1111", "222-22-2222", "333-33-3333")
LEAKS = SSNS + ("111-11", "Gus", "globex")
ON_CONFLICT = "insert into customers (id, name) values (1, 'x') on conflict (id) do update set "

ATTACKS = {
    # the two examples
    "select-whole-row-text": "update customers set name = (select customers::text) where id = 1 returning id, name",
    "select-field-of-row": "update customers c set name = (select (c).ssn) where id = 1 returning id, name",
    # whole-row forms, in SET, at any depth
    "row-text": "update customers c set name = c::text where id = 1 returning name",
    "row-field": "update customers c set name = (c).ssn where id = 1",
    "star-field": "update customers c set name = (c.*).ssn where id = 1",
    "row-to-json": "update customers c set name = row_to_json(c)::text where id = 1",
    "to-jsonb": "update customers c set name = to_jsonb(c) ->> 'ssn' where id = 1",
    "format": "update customers c set name = format('%s', c) where id = 1",
    "row-constructor": "update customers c set name = row(c.*)::text where id = 1",
    "nested-twice": "update customers c set name = (select (select (c).ssn)) where id = 1",
    "nested-from": "update customers c set name = (select x from (select (c).ssn as x) s) where id = 1",
    "nested-star": "update customers c set name = (select x.ssn from (select c.*) x) where id = 1",
    "nested-paren-star": "update customers c set name = (select x.ssn from (select (c).*) x) where id = 1",
    "nested-row-constructor": "update customers c set name = (select row(c.*)::text) where id = 1",
    "nested-unnest": "update customers c set name = (select x from unnest(array[c]) x)::text where id = 1",
    "nested-json-each": "update customers c set name = (select v from jsonb_each_text(to_jsonb(c)) "
    "as j(k, v) where k = 'ssn') where id = 1",
    "nested-lateral": "update customers c set name = (select s from (select 1) x, "
    "lateral (select c.ssn as s) y) where id = 1",
    "nested-column": "update customers c set name = (select c.ssn) where id = 1",
    "multi-assign-subquery": "update customers c set (name, phone) = (select c.ssn, c.ssn) where id = 1",
    "multi-assign-row": "update customers c set (name, phone) = row(c.ssn, c.ssn) where id = 1",
    "schema-qualified-star": "update customers set name = 'n' where id = 1 returning public.customers.*",
    "schema-qualified-row": "update customers set name = 'n' where id = 1 returning row(public.customers.*)::text",
    "from-lateral": "update customers c set name = x.s from lateral (select c.ssn as s) x where c.id = 1",
    # plain masked columns: they read the masked value
    "copy-column": "update customers set name = ssn where id = 1 returning name",
    "copy-expression": "update customers set name = ssn || '' where id = 1 returning name",
    "returning-row": "update customers c set name = 'n' where id = 1 returning c",
    "returning-nested": "delete from customers c where id = 1 returning (select c::text)",
    "returning-nested-field": "delete from customers c where id = 1 returning (select (c).ssn)",
    "data-modifying-cte": "with x as (update customers c set name = 'n' returning c.ssn) select * from x",
    "data-modifying-cte-row": "with x as (update customers c set name = 'n' returning c) select x::text from x",
    # ON CONFLICT DO UPDATE: the existing row is the target
    "upsert-column": ON_CONFLICT + "name = customers.ssn returning name",
    "upsert-row": ON_CONFLICT + "name = customers::text returning name",
    "upsert-nested-row": ON_CONFLICT + "name = (select customers::text) returning name",
    "upsert-nested-field": ON_CONFLICT + "name = (select (customers).ssn) returning name",
    "upsert-returning-nested": ON_CONFLICT + "name = 'n' returning (select customers.ssn)",
    "upsert-alias-nested": "insert into customers as c (id, name) values (1, 'x') on conflict (id) "
    "do update set name = (select (c).ssn) returning name",
    # another tenant's row through the write
    "other-tenant-upsert": "insert into customers (id, name) values (3, 'x') on conflict (id) "
    "do update set name = customers::text returning name",
    "other-tenant-upsert-column": "insert into customers (id, name) values (3, 'x') on conflict (id) "
    "do update set name = customers.name || customers.ssn returning name, ssn",
    "other-tenant-from": "update customers c set name = d.ssn from customers d where d.id = 3 and c.id = 1 "
    "returning c.name",
}

# A count of affected rows that depends on a masked value lets one infer it: none may.
INFERENCE = {
    "where-column": "update customers set name = name where ssn like '1%'",
    "where-nested-field": "update customers c set name = name where (select (c).ssn) like '1%'",
    "where-nested-row": "update customers c set name = name where exists (select 1 where c::text like '%111%')",
    "where-nested-deep": "update customers c set name = name where (select (select (select c))) :: text like '%111%'",
    "where-row": "update customers c set name = name where c::text like '%111%'",
    "delete-where-column": "delete from customers where ssn = '111-11-1111' returning id",
    "delete-nested-row": "delete from customers c where exists (select 1 where c::text like '%111%') returning id",
    "upsert-where-column": ON_CONFLICT + "name = 'n' where customers.ssn like '1%' returning id",
    "upsert-where-nested": ON_CONFLICT + "name = 'n' where (select customers::text) like '%111%' returning id",
    "from-join-on": "update customers c set name = name from (select 1) y join (select 2) z "
    "on c.ssn like '1%' where c.id = 1",
}


@pytest.fixture(autouse=True)
def fresh():
    reset_data()
    yield
    reset_data()


def stored() -> list[tuple]:
    with psycopg.connect(DIRECT) as direct:
        return direct.execute(
            "select id, tenant_id, name, email, ssn, phone, born::text from customers order by id"
        ).fetchall()


ORIGINAL = [
    (1, "acme", "Ann", "ann@acme.io", "111-11-1111", "555-0101", "1980-05-17"),
    (2, "acme", "Bob", "bob@acme.io", "222-22-2222", "555-0102", "1990-01-02"),
    (3, "globex", "Gus", "gus@globex.io", "333-33-3333", "555-0103", "1975-12-31"),
]


def assert_nothing_stored() -> None:
    """No SSN outside its own column; the SSNs and globex's row are as they were."""
    now = stored()
    assert [r[4] for r in now] == [r[4] for r in ORIGINAL]
    assert now[2] == ORIGINAL[2]
    for row in now:
        others = [str(v) for i, v in enumerate(row) if i != 4]
        assert not any(s in v for s in SSNS for v in others), row


def run(conn: psycopg.Connection, sql: str, simple: bool) -> tuple[list, int] | psycopg.Error:
    """Rows and affected count of `sql`, or the error it raised."""
    try:
        if simple:
            res = conn.pgconn.exec_(sql.encode())
            if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.lookup(res.error_field(psycopg.pq.DiagnosticField.SQLSTATE).decode())(
                    res.error_message.decode()
                )
            got = [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
            status = res.command_status.decode().split()
            return [tuple(v.decode() if v is not None else None for v in r) for r in got], int(status[-1])
        cur = conn.execute(sql)
        return (cur.fetchall() if cur.description else []), cur.rowcount
    except psycopg.Error as exc:
        return exc


def assert_safe(conn: psycopg.Connection, outcome, sql: str) -> None:
    if isinstance(outcome, psycopg.Error):
        refused = isinstance(outcome, psycopg.errors.InsufficientPrivilege)
        # PostgreSQL itself hides the target from FROM items; anything else must be pgwarden's 42501
        hidden = "invalid reference to FROM-clause entry" in str(outcome)
        assert refused or hidden, (sql, outcome)
        if refused and outcome.diag.message_hint is not None:
            assert outcome.diag.message_hint
    else:
        assert not any(leak in str(v) for row in outcome[0] for v in row for leak in LEAKS), (sql, outcome)
    assert conn.execute("select 1").fetchone() == (1,)
    assert_nothing_stored()


@pytest.mark.parametrize("simple", [False, True], ids=["extended", "simple"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_write_cannot_read_its_target_unmasked(guarded, name, simple):
    with connect(guarded, "acme_app") as conn:
        outcome = run(conn, ATTACKS[name], simple)
        assert_safe(conn, outcome, ATTACKS[name])


@pytest.mark.parametrize("name", sorted(INFERENCE))
def test_affected_rows_do_not_depend_on_a_masked_value(guarded, name):
    """Ann's SSN starts with 1: a count or RETURNING that finds her reveals it."""
    with connect(guarded, "acme_app") as conn:
        outcome = run(conn, INFERENCE[name], False)
        assert_safe(conn, outcome, INFERENCE[name])
        if not isinstance(outcome, psycopg.Error) and not name.startswith("upsert"):
            assert outcome[1] == 0, (INFERENCE[name], outcome)
        if not isinstance(outcome, psycopg.Error) and name.startswith("upsert"):
            assert outcome[0] == [], (INFERENCE[name], outcome)


def test_refusals_say_what_and_how(guarded):
    with connect(guarded, "acme_app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("update customers c set name = (select (c).ssn) where id = 1")
        assert "masked" in str(info.value) and "subquery" in str(info.value)
        assert info.value.diag.message_hint
        assert conn.execute("select 1").fetchone() == (1,)


def test_ordinary_writes_still_work_and_masked_copies_are_masked(guarded):
    with connect(guarded, "acme_app") as conn:
        assert conn.execute("update customers set name = %s where id = %s", ("Anna", 1)).rowcount == 1
        assert conn.execute("update customers set name = ssn where id = 2 returning name").fetchall() == [("****",)]
        assert conn.execute(
            "update customers c set (name, phone) = row(c.name || '!', c.ssn) where id = 1 returning name, phone"
        ).fetchall() == [("Anna!", "****")]
        assert conn.execute(
            "insert into customers (id, name) values (1, 'Ann') on conflict (id) "
            "do update set name = excluded.name returning id, name"
        ).fetchall() == [(1, "Ann")]
        assert conn.execute("insert into customers (id, name) values (7, 'Cy') returning id").fetchall() == [(7,)]
        assert conn.execute(
            "update customers c set name = (select o.total::text from orders o "
            "where o.customer_id = c.id) where id = 1 returning name"
        ).fetchall() == [("100.00",)]
        assert conn.execute("delete from customers where id = %s returning id", (7,)).fetchall() == [(7,)]
    now = stored()
    assert now[0][2] == "100.00" and now[1][2] == "****" and now[0][5] == "****"
    assert [r[4] for r in now] == list(SSNS)


def test_a_from_subquery_reading_the_table_is_a_masked_read(guarded):
    """UPDATE ... FROM items are reads (the protected projection), not the target: allowed, masked."""
    with connect(guarded, "acme_app") as conn:
        got = conn.execute(
            "update customers c set name = x.ssn from (select id, ssn from customers) x "
            "where x.id = c.id and c.id = 1 returning c.name"
        ).fetchall()
        assert got == [("****",)]
        assert (
            conn.execute(
                "update customers c set name = x.ssn from (select id, ssn from customers) x "
                "where x.id = 3 and c.id = 1 returning c.name"
            ).fetchall()
            == []
        )
    assert [r[2] for r in stored()] == ["****", "Bob", "Gus"]


@pytest.mark.parametrize(
    "sql", [ATTACKS["select-whole-row-text"], INFERENCE["where-column"], "update customers set name = ssn where id = 1"]
)
def test_the_read_only_analyst_cannot_write_at_all(guarded, sql):
    with connect(guarded, "alice") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
        assert conn.execute("select 1").fetchone() == (1,)
    assert_nothing_stored()
