"""A statement name's Bind checks follow what PostgreSQL holds under it, and SQL EXECUTE of a
protocol-level statement is checked as its Bind is.

A protocol-level INSERT whose tenant value is a parameter ($2) is checked at each Bind.
Neither a second Parse of the name (PostgreSQL answers 42P05 and keeps the first), nor a
Parse or Close that PostgreSQL skipped after an error, nor SQL EXECUTE of the name may run
that INSERT with another tenant's value.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.policy.conftest import DB, DIRECT, POLICY, connect, policy_proxy, reset_data
from tests.rawwire import FLUSH, SYNC, Wire, bind, close_statement, execute, parse, query

INSERT = "INSERT INTO orders (id, tenant_id, customer_id, total) VALUES ($1, $2, 11, 1.00) RETURNING id, tenant_id"
HARMLESS = "SELECT $1::text, $2::text"
FAILS = "SELECT 'not a number'::int"  # PostgreSQL refuses this Parse; pgwarden lets it through


@pytest.fixture
def wire(guarded):
    reset_data()
    w = Wire(guarded.host, guarded.port, "acme_app", DB)
    yield w
    w.close()
    assert globex_orders() == [], "acme_app wrote a globex row"
    reset_data()


def globex_orders() -> list[tuple]:
    with psycopg.connect(DIRECT.replace("dbname=postgres", f"dbname={DB}")) as direct:
        return direct.execute("select id from orders where tenant_id = 'globex' and id > 900").fetchall()


def session_mode(proxy) -> bool:
    return proxy.config["pool"]["mode"] == "session"


def test_bind_is_checked(wire) -> None:
    assert wire.send(parse("s1", INSERT), SYNC).errors == []
    assert wire.send(bind("s1", [b"901", b"globex"]), execute(), SYNC).errors == ["42501"]
    assert wire.send(bind("s1", [b"901", b"acme"]), execute(), SYNC).rows == [["901", "acme"]]


@pytest.mark.parametrize("again", [HARMLESS, "SELECT 1", "select $1::int, $2::int, $3::int"])
def test_parse_of_an_existing_name_keeps_its_checks(guarded, wire, again) -> None:
    """PostgreSQL refuses the second Parse (42P05) and keeps the INSERT: so do pgwarden's checks.
    (Under transaction pooling names are pgwarden's: the second Parse replaces the first.)"""
    assert wire.send(parse("s1", INSERT), SYNC).errors == []
    assert wire.send(bind("s1", [b"902", b"globex"]), execute(), SYNC).errors == ["42501"]
    second = wire.send(parse("s1", again), SYNC).errors
    assert second == (["42P05"] if session_mode(guarded) else [])
    wire.send(bind("s1", [b"902", b"globex"]), execute(), SYNC)
    # ... also when the second Parse and the Bind ride in one pipeline, across a Sync
    wire.send(parse("s1", again), SYNC, bind("s1", [b"903", b"globex"]), execute(), SYNC)
    assert globex_orders() == []


def test_parse_skipped_after_an_error_keeps_the_checks(wire) -> None:
    """A Parse after an error in its cycle is skipped: the name keeps the INSERT (also the unnamed one)."""
    for name in ("s2", ""):
        assert wire.send(parse(name, INSERT), SYNC).errors == []
        skipped = wire.send(parse("e1", FAILS), parse(name, HARMLESS), SYNC).errors
        assert skipped and skipped[0] != "42501", skipped  # PostgreSQL's error, not pgwarden's
        wire.send(bind(name, [b"904", b"globex"]), execute(), SYNC)
        assert globex_orders() == []


def test_close_skipped_after_an_error_keeps_the_checks(guarded, wire) -> None:
    assert wire.send(parse("s3", INSERT), SYNC).errors == []
    assert wire.send(parse("e2", FAILS), close_statement("s3"), SYNC).errors
    wire.send(bind("s3", [b"905", b"globex"]), execute(), SYNC)
    wire.send(parse("s3", HARMLESS), SYNC)
    wire.send(bind("s3", [b"906", b"globex"]), execute(), SYNC)
    assert globex_orders() == []
    if session_mode(guarded):  # the INSERT is still there, and still checked
        assert wire.send(bind("s3", [b"907", b"acme"]), execute(), SYNC).rows == [["907", "acme"]]


def test_close_then_parse_in_one_cycle_is_the_new_statement(wire) -> None:
    """What works must keep working: Close and Parse again in one cycle, Bind in the next."""
    assert wire.send(parse("s4", INSERT), SYNC).errors == []
    assert wire.send(close_statement("s4"), parse("s4", HARMLESS), SYNC).errors == []
    assert wire.send(bind("s4", [b"x", b"globex"]), execute(), SYNC).rows == [["x", "globex"]]
    assert wire.send(
        parse("", INSERT),
        bind("", [b"908", b"acme"]),
        execute(),
        SYNC,
        parse("", HARMLESS),
        bind("", [b"y", b"globex"]),
        execute(),
        SYNC,
    ).rows == [["908", "acme"], ["y", "globex"]]


STEALS = [
    "EXECUTE s5(910, 'globex')",
    "execute S5 (910, 'globex')",
    "/* c */ EXECUTE s5(910, 'globex')",
    "select 1; execute s5(910, 'globex')",
    "EXPLAIN ANALYZE EXECUTE s5(910, 'globex')",
    "explain (analyze, costs off) execute s5(910, 'globex')",
    "CREATE TABLE stolen AS EXECUTE s5(910, 'globex')",
    "EXECUTE s5(910, $$globex$$)",
    "EXECUTE s5(910, E'glo\\x62ex')",
    "EXECUTE s5(910, 'glo' || 'bex')",
    "EXECUTE s5(910, (select 'globex'))",
    "EXECUTE s5(910, 'acme'::text)",
    "EXECUTE s5(910, NULL)",
    "EXECUTE s5(910)",
    "EXECUTE s5(910, current_user)",
]


@pytest.mark.parametrize("sql", STEALS)
def test_sql_execute_of_a_protocol_statement_is_checked(guarded, wire, sql) -> None:
    """SQL EXECUTE runs what a Bind would: its tenant argument must be the session's tenant, as a
    plain literal (under transaction pooling SQL EXECUTE is refused altogether)."""
    assert wire.send(parse("s5", INSERT), SYNC).errors == []
    expected = ["42501"] if session_mode(guarded) else ["0A000", "42501"]
    assert wire.send(query(sql)).errors[:1] in [[e] for e in expected], sql
    assert wire.send(parse("", sql), bind("", []), execute(), SYNC).errors[:1] in [[e] for e in expected], sql
    assert globex_orders() == []


def test_sql_execute_after_a_refused_reparse_is_checked(guarded, wire) -> None:
    assert wire.send(parse("s6", INSERT), SYNC).errors == []
    wire.send(parse("s6", HARMLESS), SYNC)
    wire.send(query("EXECUTE s6(911, 'globex')"))
    wire.send(parse("e3", FAILS), close_statement("s6"), SYNC)
    wire.send(query("EXECUTE s6(912, 'globex')"))
    if session_mode(guarded):
        assert wire.send(query("EXECUTE s6(913, 'acme')")).rows == [["913", "acme"]]


@pytest.mark.parametrize(
    "prepare",
    [
        "PREPARE p AS INSERT INTO orders (id, tenant_id, customer_id, total) VALUES ($1, $2, 11, 1.00)",
        "prepare p (int, text) as insert into orders (id, tenant_id, customer_id, total) select $1, $2, 11, 1",
        "PREPARE p AS INSERT INTO orders VALUES ($1, $2, 11, 1.00)",
        "PREPARE p AS INSERT INTO public.orders (tenant_id, id) VALUES ($2, $1) ON CONFLICT DO NOTHING",
    ],
)
def test_sql_prepare_with_a_tenant_parameter_is_refused(guarded, prepare) -> None:
    """A statement PREPAREd in SQL has no Bind to check: one whose tenant value is a parameter is
    refused, so EXECUTE p(..., 'globex') finds nothing to run."""
    reset_data()
    with connect(guarded, "acme_app") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute(prepare, prepare=False)
        assert info.value.sqlstate in ("42501", "0A000"), info.value
        with pytest.raises(psycopg.Error) as info:
            c.execute("EXECUTE p(914, 'globex')", prepare=False)
        assert info.value.sqlstate in ("26000", "0A000"), info.value
    assert globex_orders() == []


@pytest.mark.parametrize("name", ["", "n1"])
def test_statement_prepared_before_a_tenant_change_runs_for_the_new_tenant(guarded, name) -> None:
    """A Bind after SET pgwarden.tenant runs the statement rewritten for the new tenant, also the
    unnamed one under transaction pooling (there the backend kept the old tenant's rewrite)."""
    w = Wire(guarded.host, guarded.port, "saas_backend", DB)
    try:
        w.send(query("set pgwarden.tenant = 'acme'"))
        assert w.send(parse(name, "SELECT name FROM customers ORDER BY id"), SYNC).errors == []
        w.send(query("set pgwarden.tenant = 'globex'"))
        assert w.send(bind(name, []), execute(), SYNC).rows == [["Gus"]]
        assert w.send(bind(name, []), execute(), SYNC).rows == [["Gus"]]
        w.send(query("set pgwarden.tenant = 'acme'"))
        assert w.send(bind(name, []), execute(), SYNC).rows == [["Ann"], ["Bob"]]
    finally:
        w.close()


# Statements the policy passes but the session layer refuses as a Parse (under transaction pooling, some
# in both modes): the Parse is refused after the guard saw it.
REFUSED_LATER = ["SET LOCAL search_path = public", "PREPARE q AS SELECT 1", "execute s7(922, 'globex')"]


@pytest.mark.parametrize("later", REFUSED_LATER)
@pytest.mark.parametrize("name", ["s7", ""])
def test_a_parse_refused_after_the_guard_passed_it_keeps_no_old_statement_unchecked(guarded, wire, later, name):
    """A second Parse of the name, refused after the policy passed it, must not leave the INSERT runnable
    without its Bind check: before the fix, under transaction pooling, the guard held the refused
    statement (no checks) while the name still ran the INSERT, so a Bind wrote a globex row."""
    assert wire.send(parse(name, INSERT), SYNC).errors == []
    refused = wire.send(parse(name, later), SYNC).errors
    assert refused or session_mode(guarded), later  # (in session mode PostgreSQL may run some: 42P05 or fine)
    assert wire.send(bind(name, [b"922", b"globex"]), execute(), SYNC).errors
    assert globex_orders() == []
    assert wire.send(parse("", INSERT), bind("", [b"923", b"acme"]), execute(), SYNC).rows == [["923", "acme"]]


@pytest.mark.parametrize("name", ["s8", ""])
@pytest.mark.parametrize("flushed", [False, True])
def test_a_query_the_backend_skips_after_an_error_settles_nothing(guarded, wire, name, flushed) -> None:
    """After an error in an extended-protocol cycle PostgreSQL skips everything up to the Sync, a Query
    too, which then gets no ReadyForQuery. pgwarden paired the Sync's with the Query, so a later Sync
    settled the failed cycle as done: its skipped Close and Parse replaced the INSERT's Bind check.
    (`flushed`: the error arrives before the rest is sent.)"""
    assert wire.send(parse(name, INSERT), SYNC).errors == []
    wire.sock.sendall(parse("e4", FAILS) + (FLUSH if flushed else b""))
    if flushed:
        assert wire.replies(0).messages == [] and _error_arrives(wire)
    closing = close_statement(name) if name else b""
    wire.sock.sendall(query("SELECT 1") + closing + parse(name, HARMLESS) + SYNC)
    answered = wire.replies(1).messages
    assert [kind for kind, _ in answered][-1:] == ["Z"] and ("C", b"SELECT 1\0") not in answered
    assert wire.send(SYNC).messages == [("Z", b"I")]
    after = wire.send(bind(name, [b"951", b"globex"]), execute(), SYNC)
    if name and not session_mode(guarded):  # (transaction pooling: names are pgwarden's, Close and Parse its own)
        assert after.rows == [["951", "globex"]]  # (the harmless statement, echoing its parameters)
    else:
        assert after.errors == ["42501"]
    assert globex_orders() == []
    assert wire.send(query("SELECT 2")).rows == [["2"]]  # (in step: each answer is its own)


def _error_arrives(wire: Wire) -> bool:
    """Read the ErrorResponse a Flush brings (no ReadyForQuery follows it)."""
    wire.sock.settimeout(5)
    while b"E" not in wire.buf[:1]:
        wire.buf += wire.sock.recv(65536)
    return True


LONG = "s" * 63


def test_a_statement_name_postgres_would_cut_is_refused(guarded, wire) -> None:
    """PostgreSQL keys a statement by the first 63 bytes of its name, the guard by all of it: a Bind of
    another long name with the same first 63 bytes (or SQL EXECUTE of them) ran the INSERT unchecked."""
    refused = wire.send(parse(LONG + "_a", INSERT), SYNC)
    assert refused.errors == ["42622"] and "63 bytes" in str(refused.messages)
    for sql in (bind(LONG + "_b", [b"970", b"globex"]), bind("é" * 32, [b"970", b"globex"])):
        assert wire.send(sql, execute(), SYNC).errors == ["42622"]
    wire.send(query(f"EXECUTE {LONG}(971, 'globex')"))
    assert globex_orders() == []
    assert wire.send(parse(LONG, INSERT), bind(LONG, [b"972", b"acme"]), execute(), SYNC).rows == [["972", "acme"]]


INT2, INT4, TEXT = 21, 23, 25


@pytest.mark.parametrize(
    "types, value, formats, writes",
    [
        ((0, INT4), b"acme", (0, 1), None),  # PostgreSQL reads b"acme" as the integer 1633906021
        ((0, INT2), b"ac", (1,), None),  # (one format code for all: the id in binary too)
        ((0, TEXT), b"acme", (0, 1), "acme"),  # text in binary is its bytes: the same tenant
        ((0, 0), b"acme", (0, 1), "acme"),  # the column's type (text here): taken for a tenant not a number
    ],
)
def test_a_tenant_parameter_in_binary_is_read_as_postgres_reads_it(wire, types, value, formats, writes) -> None:
    """The Bind check compared the bytes sent with the tenant's text; in binary format PostgreSQL reads
    them with the declared type's receive function."""
    row = b"\x00\x00\x03\xc2" if formats == (1,) else b"962"  # (id 962)
    answer = wire.send(parse("", INSERT, types), bind("", [row, value], formats=formats), execute(), SYNC)
    assert answer.errors == ([] if writes else ["42501"]), answer
    with psycopg.connect(SHOP) as direct:
        stored = direct.execute("select tenant_id from orders where id = 962").fetchall()
        direct.execute("delete from orders where id = 962")
    assert stored == ([(writes,)] if writes else [])


SHOP = DIRECT.replace("dbname=postgres", f"dbname={DB}")
NUMERIC = POLICY.replace("{acme_app: acme, globex_app: globex}", "{acme_app: acme, globex_app: globex, t42_app: '42'}")
NUMERIC = NUMERIC.replace("app: {users: [acme_app,", "app: {users: [t42_app, acme_app,")


@pytest.fixture(scope="module")
def numeric(shop_db, tmp_path_factory):
    assert "t42_app: '42'" in NUMERIC and "[t42_app, acme_app," in NUMERIC
    proxy = policy_proxy(tmp_path_factory.mktemp("numeric-tenant"), "transaction", NUMERIC)
    yield proxy
    proxy.stop()


@pytest.mark.parametrize(
    "types, value, writes",
    [
        ((0, INT2), b"42", None),  # read as the int2 13362: another tenant's id
        ((0, 0), b"42", None),  # the column's type unknown, the tenant a number: never taken in binary
        ((0, INT2), (42).to_bytes(2, "big"), "42"),
        ((0, INT4), (42).to_bytes(4, "big"), "42"),
        ((0, INT4), (13362).to_bytes(4, "big"), None),
    ],
)
def test_a_numeric_tenant_in_binary_must_be_the_tenants_number(numeric, types, value, writes) -> None:
    reset_data()
    w = Wire(numeric.host, numeric.port, "t42_app", DB)
    try:
        answer = w.send(parse("", INSERT, types), bind("", [b"963", value], formats=(0, 1)), execute(), SYNC)
        assert answer.errors == ([] if writes else ["42501"]), answer
    finally:
        w.close()
    with psycopg.connect(SHOP) as direct:
        stored = direct.execute("select tenant_id from orders where id = 963").fetchall()
    reset_data()
    assert stored == ([(writes,)] if writes else [])
