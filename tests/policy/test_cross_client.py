"""What a pooled backend holds for one client is unreachable to every other client.

One backend per pool (pool size 1) makes sharing certain: policed sessions share the
least-privilege role's backend, bypass sessions the other one, and the two never meet.
Client A prepares statements, opens cursors, creates temporary objects and changes
settings; client B, another tenant or a masked role (or, among bypass sessions, another
bypass client), tries to list, guess, run, explain or drop them. Policed clients see
their shared backend through probe functions the test creates as superuser and the test
policy allows (pgwarden does not look inside an allowed function): SECURITY INVOKER
functions that read pg_prepared_statements, pg_cursors, the temporary schema and
statement_timeout of the backend that runs them.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from rewriter.channels import scoped_channel
from tests import policed_role
from tests.harness import ProxyProcess, base_config
from tests.policy.conftest import DB, DIRECT, TOKEN_KEY, made_by_owner, reset_data
from tests.policy.conftest import POLICY as SHOP_POLICY
from tests.rawwire import SYNC, Wire, bind, execute, parse

REFUSED = ("0A000", "42501", "26000")
CUSTOMER = "select id, name, ssn from customers where id = %s"
PROBES = """
create or replace function public.pgw_probe_statements() returns table (name text, statement text)
  language sql security invoker as
  $$ select name, statement from pg_catalog.pg_prepared_statements $$;
create or replace function public.pgw_probe_backend()
  returns table (pid int, who text, cursors bigint, temps bigint, timeout text)
  language sql security invoker as
  $$ select pg_backend_pid(), current_user::text, (select count(*) from pg_catalog.pg_cursors),
            (select count(*) from pg_catalog.pg_class where relnamespace = pg_my_temp_schema())
            + (select count(*) from pg_catalog.pg_type where typnamespace = pg_my_temp_schema()),
            current_setting('statement_timeout') $$;
"""
POLICY = SHOP_POLICY.replace(
    "default: deny", "functions:\n  allow: [public.pgw_probe_statements, public.pgw_probe_backend]\ndefault: deny"
)
assert POLICY != SHOP_POLICY
SHOP = DIRECT.replace("dbname=postgres", f"dbname={DB}")


@pytest.fixture(scope="module")
def probes(shop_db):
    """The probe functions, created directly as superuser (never through pgwarden)."""
    with made_by_owner(PROBES, "drop function if exists pgw_probe_statements(), pgw_probe_backend()"):
        yield


def start_proxy(workdir, mode: str) -> ProxyProcess:
    (workdir / "policies").mkdir(parents=True, exist_ok=True)
    (workdir / "policies" / "shop.yaml").write_text(POLICY)
    config = base_config(
        pool={"mode": mode, "size": 1, "query_wait_timeout": 1.0},
        policies="policies",
        backend_auth=policed_role.backend_auth(policed_role.grant(POLICY)),
    )
    return ProxyProcess(config, workdir, env={"PGWARDEN_TEST_TENANT_KEY": TOKEN_KEY}).start()


@pytest.fixture(scope="module", params=["transaction", "session"])
def one_backend(request, probes, tmp_path_factory):
    proxy = start_proxy(tmp_path_factory.mktemp(f"cross-{request.param}"), request.param)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def shared(probes, tmp_path_factory):
    """Transaction pooling over one backend: every client's transactions run on it."""
    proxy = start_proxy(tmp_path_factory.mktemp("cross-shared"), "transaction")
    yield proxy
    proxy.stop()


def connect(proxy: ProxyProcess, user: str) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user=user, dbname=DB), autocommit=True)


def refused(conn: psycopg.Connection, sql: str, params=None, **kw) -> str:
    """Run `sql`, expecting pgwarden's refusal; the SQLSTATE. The connection stays usable."""
    with pytest.raises(psycopg.Error) as info:
        rows = conn.execute(sql, params, **kw).fetchall()
        pytest.fail(f"{sql!r} ran and returned {rows!r}")
    assert info.value.sqlstate in REFUSED, (sql, info.value.sqlstate, str(info.value))
    assert conn.execute("select 1").fetchone() == (1,)
    return info.value.sqlstate


def proxy_statements(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """pgwarden's statements on the backend serving `conn` (policed or bypass), read by the probe."""
    return conn.execute(
        "select name, statement from pgw_probe_statements() where name like 'pgw_%' order by statement"
    ).fetchall()


def probe(conn: psycopg.Connection) -> tuple:
    """(cursors, temporary objects, statement_timeout) of the backend serving `conn`."""
    return conn.execute("select cursors, temps, timeout from pgw_probe_backend()").fetchone()


def backend_of(conn: psycopg.Connection) -> tuple[int, str]:
    """(pid, role) of the backend serving `conn`."""
    return conn.execute("select pid, who from pgw_probe_backend()").fetchone()


# --- per-backend views and functions, refused to every policed client --------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "select name, statement from pg_prepared_statements",
        "select * from pg_catalog.pg_prepared_statements",
        "select * from pg_catalog.pg_prepared_statement()",
        "select name, statement from pg_cursors",
        "select * from pg_cursor()",
        "select gid, owner from pg_prepared_xacts",
        "select * from pg_locks",
        "with p as (select * from pg_prepared_statements) select count(*) from p",
        'select (select count(*) from "pg_prepared_statements")',
        "select lastval()",
        "select currval('customers_seq')",
        "select pg_catalog.currval('x'::regclass)",
        "prepare transaction 'acme-1'",
        "commit prepared 'globex-1'",
        "rollback prepared 'globex-1'",
    ],
)
def test_per_backend_state_is_refused_to_policed_clients(one_backend, sql) -> None:
    for user in ("globex_app", "alice"):
        with connect(one_backend, user) as b:
            assert refused(b, sql) == "42501"


# --- proxy-wide statement names under transaction pooling -------------------------------------

# A prepares, an observer on the same pool lists the names, B runs or drops them. Policed
# sessions share the least-privilege role's backend; bypass sessions share the other one.
POLICED_CASE = ("acme_app", "globex_app", ("globex_app", "alice"))
BYPASS_CASE = ("postgres", "postgres", ("postgres",))
STEALS = [
    "EXECUTE {}(1)",
    'execute "{}" (1)',
    "/* hi */ EXECUTE {}(1)",
    "select 1; execute {}(1)",
    "EXPLAIN EXECUTE {}(1)",
    "explain (analyze, costs off) execute {}(1)",
    "create temp table stolen as execute {}(1)",
    "explain analyze create table stolen as execute {}(1)",
]


@pytest.mark.parametrize("owner, observer, thieves", [POLICED_CASE, BYPASS_CASE])
def test_other_clients_statements_cannot_be_executed(shared, owner, observer, thieves) -> None:
    """A prepares at the protocol level; B (another tenant, a masked analyst; among bypass
    sessions another bypass client), who can list the names on the shared backend, runs them
    in every form that names a prepared statement."""
    mine = [(1, "Ann", "****")] if owner == "acme_app" else [(1, "Ann", "111-11-1111")]
    with connect(shared, owner) as a, connect(shared, observer) as seer:
        assert a.execute(CUSTOMER, (1,), prepare=True).fetchall() == mine
        a.execute("update customers set phone = phone where id = %s", (1,), prepare=True)
        names = [
            name
            for name, text in proxy_statements(seer)
            if "customers" in text and ("acme" in text) == (owner == "acme_app")
        ]
        assert len(names) >= 2, proxy_statements(seer)
        for user in thieves:
            with connect(shared, user) as b:
                for name in names:
                    for sql in STEALS:
                        refused(b, sql.format(name))
                        refused(b, sql.format(name), prepare=True)  # as a Parse: the extended protocol
        assert a.execute(CUSTOMER, (1,), prepare=True).fetchall() == mine
    with psycopg.connect(SHOP) as direct:
        assert direct.execute("select count(*) from pg_class where relname = 'stolen'").fetchone() == (0,)


@pytest.mark.parametrize("owner, observer, thieves", [POLICED_CASE, BYPASS_CASE])
def test_other_clients_statements_cannot_be_deallocated(shared, owner, observer, thieves) -> None:
    sql = CUSTOMER + " and 2 = 2"
    mine = [(2, "Bob", "****")] if owner == "acme_app" else [(2, "Bob", "222-22-2222")]
    with connect(shared, owner) as a, connect(shared, observer) as seer:
        assert a.execute(sql, (2,), prepare=True).fetchall() == mine
        # (one name per schema generation: a schema read again meanwhile prepares it anew)
        names = [
            n for n, text in proxy_statements(seer) if "2 = 2" in text and ("acme" in text) == (owner == "acme_app")
        ]
        assert names
        for user in thieves:
            with connect(shared, user) as b:
                for name in names:
                    for stmt in (
                        f"DEALLOCATE {name}",
                        f'deallocate prepare "{name}"',
                        f"/* x */ deallocate {name}",
                        f"select 1; deallocate {name}",
                        "select 1; deallocate all",
                    ):
                        refused(b, stmt)
                        refused(b, stmt, prepare=True)
                    b.pgconn.exec_(f"DEALLOCATE {name}".encode())  # simple protocol: answered by pgwarden
        assert set(names) <= {n for n, _ in proxy_statements(seer)}
        assert a.execute(sql, (2,), prepare=True).fetchall() == mine


def test_names_are_keyed_and_bound_to_the_identity(shared) -> None:
    """Names are not a digest anyone can compute, and the same text prepared by two tenants
    (countries has no tenant column: nothing in the text differs) gets two statements."""
    import hashlib

    sql = "select name from countries where code = %s"
    with connect(shared, "acme_app") as a, connect(shared, "globex_app") as g:
        assert a.execute(sql, ("us",), prepare=True).fetchall() == [("United States",)]
        assert g.execute(sql, ("fr",), prepare=True).fetchall() == [("France",)]
        seen = [(n, t) for n, t in proxy_statements(g) if "countries" in t and "code" in t]
        assert len(seen) >= 2 and len({text for _, text in seen}) == 1, seen
        for name, text in seen:
            for types in (b"", b"\x00\x00\x00\x19", b"\x00\x01\x00\x00\x00\x19"):
                unkeyed = hashlib.blake2b(text.encode() + b"\x00" + types, digest_size=10).hexdigest()
                assert name != f"pgw_{unkeyed}"


@pytest.mark.parametrize(
    "user, statements",
    [
        ("acme_app", ["begin", "declare c cursor with/**/hold for select name from customers", "commit"]),
        ("acme_app", ["begin", "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", "commit"]),
        ("postgres", ["create /* x */ temporary table t (x int)"]),
        ("postgres", ["create table pg_temp.t (x int)"]),
        ("postgres", ["select 1 as x into temp t"]),
        ("postgres", ["create type pg_temp.int4 as (a int)"]),
        ("postgres", ["create temp sequence s"]),
        ("postgres", ["select \"set_config\"('statement_timeout', '4321', false)"]),
        ("postgres", ["SELECT SET_CONFIG('statement_timeout', '4321', false)"]),
        ("acme_app", ["select U&\"set\\005fconfig\"('statement_timeout', '4321', false)"]),
    ],
)
def test_another_clients_hold_cursor_or_temp_objects_never_reach_b(shared, user, statements) -> None:
    """State that outlives a transaction keeps A on its backend until A leaves, however it is
    spelled; then the backend is reset. B, a client of the same pool (globex_app for a policed
    A, another bypass client for a bypass A), waits (and times out) or sees nothing of it."""
    other = "globex_app" if user == "acme_app" else "postgres"
    with connect(shared, user) as a:
        for sql in statements:
            a.execute(sql)
        with connect(shared, other) as b:
            try:
                row = probe(b)
            except psycopg.Error as exc:  # A keeps the backend: B cannot have it
                assert exc.sqlstate == "53300", exc
            else:
                pytest.fail(f"B shared A's backend: {row}")
    with connect(shared, other) as b:
        assert probe(b) == (0, 0, "0")


@pytest.mark.parametrize("policed", ["acme_app", "globex_app", "alice"])
def test_policed_and_bypass_clients_never_share_a_backend(one_backend, policed) -> None:
    """With one backend per pool, a bypass client never gets the backend a policed client used
    (nor waits for it), in either order and while the other holds its own."""
    with connect(one_backend, policed) as p:
        first = backend_of(p)
    with connect(one_backend, "postgres") as b:
        bypass = backend_of(b)
        with connect(one_backend, policed) as p:
            p.execute("begin")  # holds the policed backend (and, in session mode, it is p's)
            assert backend_of(p) == first
            assert backend_of(b) == bypass  # not waiting for the policed backend
            p.execute("rollback")
    assert first[1] == policed_role.role_for(POLICY) and bypass[1] == "postgres"
    assert first[0] != bypass[0]


# --- transaction pooling: what a policed client itself may not do ------------------------------


@pytest.mark.parametrize("sql", ["prepare q as select 1", "execute q", "explain execute q"])
def test_sql_prepared_statements_are_refused_under_transaction_pooling(shared, sql) -> None:
    with connect(shared, "saas_backend") as c:
        # EXPLAIN is refused to policed sessions for its own reason (42501) when the policy
        # judges it before the pooling check does; either way nothing reaches the backend
        assert refused(c, sql) in (("0A000", "42501") if sql.startswith("explain") else ("0A000",))


# --- a client's own statements under a new tenant or policy ------------------------------------


def test_sql_prepare_then_tenant_change_refuses_execute(one_backend) -> None:
    if one_backend.config["pool"]["mode"] == "transaction":
        pytest.skip("SQL PREPARE is refused under transaction pooling")
    with connect(one_backend, "saas_backend") as c:
        c.execute("set pgwarden.tenant = 'acme'")
        prepared = c.pgconn.exec_(b"prepare q as select name from customers order by id")
        assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message
        assert c.execute("execute q").fetchall() == [("Ann",), ("Bob",)]
        c.execute("set pgwarden.tenant = 'globex'")
        assert refused(c, "execute q") == "42501"
        assert refused(c, "explain execute q") == "42501"
        c.pgconn.send_query_prepared(b"q", [])  # Bind of the SQL name, extended protocol
        result = c.pgconn.get_result()
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42501"
        while c.pgconn.get_result() is not None:
            pass
        c.pgconn.exec_(b"deallocate q")
        c.pgconn.exec_(b"prepare q as select name from customers order by id")
        assert c.execute("execute q").fetchall() == [("Gus",)]


def test_sql_deallocate_that_failed_is_not_trusted(one_backend) -> None:
    """A DEALLOCATE in a failed transaction does nothing: the name still holds acme's statement,
    so after a switch to globex (whose PREPARE of the name fails) EXECUTE is refused."""
    if one_backend.config["pool"]["mode"] == "transaction":
        pytest.skip("SQL PREPARE is refused under transaction pooling")
    with connect(one_backend, "saas_backend") as c:
        run = c.pgconn.exec_
        c.execute("set pgwarden.tenant = 'acme'")
        assert run(b"prepare q2 as select name from customers order by id").status == psycopg.pq.ExecStatus.COMMAND_OK
        for sql in (b"begin", b"select 1/0", b"deallocate q2", b"rollback"):
            run(sql)
        c.execute("set pgwarden.tenant = 'globex'")
        assert (
            run(b"prepare q2 as select name from customers order by id").status == psycopg.pq.ExecStatus.FATAL_ERROR
        )  # q2 exists: acme's
        assert refused(c, "execute q2") == "42501"
        for sql in (b"begin", b"deallocate q2", b"commit"):  # in a healthy transaction: done
            assert run(sql).status == psycopg.pq.ExecStatus.COMMAND_OK, sql
        run(b"prepare q2 as select name from customers order by id")
        assert c.execute("execute q2").fetchall() == [("Gus",)]


def test_sql_prepare_then_policy_reload_refuses_execute(one_backend, tmp_path) -> None:
    if one_backend.config["pool"]["mode"] == "transaction":
        pytest.skip("SQL PREPARE is refused under transaction pooling")
    policy = one_backend.workdir / "policies" / "shop.yaml"
    with connect(one_backend, "acme_app") as c:
        prepared = c.pgconn.exec_(b"prepare q as select name from customers where id = 1")
        assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message
        assert c.execute("execute q").fetchall() == [("Ann",)]
        policy.write_text(POLICY + "\n# reloaded\n")
        one_backend.reload()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.execute("execute q")
            except psycopg.Error as exc:
                assert exc.sqlstate == "42501"
                break
            time.sleep(0.2)
        else:
            pytest.fail("EXECUTE still ran the statement rewritten under the old policy")
    policy.write_text(POLICY)
    one_backend.reload()


def test_protocol_statements_are_prepared_again_for_a_new_tenant(one_backend) -> None:
    sql = "select name from customers where id > %s order by id"
    with connect(one_backend, "saas_backend") as c:
        c.execute("set pgwarden.tenant = 'acme'")
        for _ in range(2):
            assert c.execute(sql, (0,), prepare=True).fetchall() == [("Ann",), ("Bob",)]
        c.execute("set pgwarden.tenant = 'globex'")
        assert c.execute(sql, (0,), prepare=True).fetchall() == [("Gus",)]
        c.execute("set pgwarden.tenant = 'acme'")
        assert c.execute(sql, (0,), prepare=True).fetchall() == [("Ann",), ("Bob",)]


def test_after_a_client_leaves_the_next_sees_nothing_of_it(one_backend) -> None:
    with connect(one_backend, "acme_app") as a:
        assert a.execute(CUSTOMER, (1,), prepare=True).fetchall() == [(1, "Ann", "****")]
        held = a.execute("select statement from pgw_probe_statements()").fetchall()
        assert any("customers" in t for (t,) in held), held
    with connect(one_backend, "globex_app") as b:
        seen = b.execute("select name, statement from pgw_probe_statements()").fetchall()
        if one_backend.config["pool"]["mode"] == "session":
            assert [t for _, t in seen] == []  # DISCARD ALL before the backend was lent again
        else:
            assert any("acme" in t for _, t in seen), seen  # still there, under keyed names
        for name, _ in seen:
            refused(b, f"execute {name}(1)")


def test_another_clients_portals_are_gone_when_its_transaction_ends(shared) -> None:
    """Cursors and protocol portals end with A's transaction (WITH HOLD ones keep A on its
    backend, above): B's FETCH, MOVE, CLOSE and Describe of the name find nothing."""
    with connect(shared, "acme_app") as a, connect(shared, "globex_app") as b:
        with a.transaction():
            a.execute("declare c cursor for select name from customers order by id")
            assert a.execute("fetch 1 from c").fetchall() == [("Ann",)]
        for sql in ("fetch all from c", "move next in c", "close c"):
            with pytest.raises(psycopg.Error) as info:
                b.execute(sql)
            assert info.value.sqlstate == "34000", (sql, info.value)
        described = b.pgconn.describe_portal(b"c")
        assert described.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"34000"


@pytest.mark.parametrize(
    "owner, sql, values, thief",
    [
        ("globex_app", "SELECT id, name, email FROM customers ORDER BY id", [], "acme_app"),  # another tenant's rows
        ("acme_app", "SELECT id, email FROM customers ORDER BY id", [], "alice"),  # the analyst's masks
        ("globex_app", "UPDATE orders SET total = $1 WHERE id = $2", [b"0.01", b"12"], "acme_app"),  # a write
    ],
)
def test_a_named_portal_of_the_unnamed_statement_is_the_clients_own(shared, owner, sql, values, thief) -> None:
    """Bind to a named portal from the unnamed statement, with no Parse: under transaction pooling it
    went to the backend as sent, so it ran the unnamed statement the backend's last client left there
    (rewritten for that client). It must run the thief's own unnamed statement, or be refused."""
    a, b = Wire(shared.host, shared.port, owner, DB), Wire(shared.host, shared.port, thief, DB)
    try:
        assert a.send(parse("", sql), bind("", [b"999.99", b"12"] if values else []), execute(), SYNC).errors == []
        stolen = b.send(bind("", values, portal="p"), execute("p"), SYNC)
        assert stolen.errors == ["26000"] and stolen.rows == [], stolen
        assert b.send(parse("", "SELECT 7"), bind("", [], portal="p"), execute("p"), SYNC).rows == [["7"]]
    finally:
        a.close()
        b.close()
    with psycopg.connect(SHOP) as direct:
        total = str(direct.execute("select total from orders where id = 12").fetchone()[0])
    reset_data()
    assert total != "0.01", "acme_app changed globex's order 12"


HIDING = ["/* /* */ */ ", "-- x\r"]  # PostgreSQL's lexer: block comments nest, and `--` ends at a carriage return


@pytest.mark.parametrize("prefix", HIDING, ids=["nested-comment", "dash-comment-cr"])
def test_a_statement_behind_a_comment_is_judged_as_what_it_is(one_backend, prefix) -> None:
    """A comment read otherwise than PostgreSQL reads it hid the statement's first word (found
    2026-12-06): acme_app's LISTEN on globex's scoped channel heard globex's payloads, a PREPARE
    under transaction pooling ran for other tenants, and SETs reached the next client."""
    with connect(one_backend, "acme_app") as a:
        with pytest.raises(psycopg.Error) as info:
            a.execute(f'{prefix}LISTEN "{scoped_channel("globex", "jobs")}"')
        assert info.value.sqlstate == "42501", info.value
        if one_backend.config["pool"]["mode"] == "transaction":
            with pytest.raises(psycopg.Error) as info:
                a.execute(f"{prefix}PREPARE hidden AS SELECT id FROM customers")
            assert info.value.sqlstate == "0A000", info.value
        a.execute(f"{prefix}SET statement_timeout = 4321")
        assert a.execute("show statement_timeout").fetchone() == ("4321ms",)
    with connect(one_backend, "globex_app") as b:
        assert b.execute("show statement_timeout").fetchone() != ("4321ms",)
