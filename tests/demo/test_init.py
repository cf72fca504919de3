"""`pgwarden init`: a scratch schema's starter policy loads, passes `check --live`, suggests the masks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from policies.load import load_policy
from tests.harness import PG_HOST, PG_PORT, ROOT

DB = "pgw_init_test"
SCHEMA = """
create table customers (id int, tenant_id text, name text, contact text, ssn text, mobile text,
                        birth_date date, home_address text, last_ip inet, card_number text, note text);
insert into customers values (1, 'acme', 'Ann', 'ann@acme.io', '111-11-1111', '555-0101', '1980-01-01',
                              '1 Main St', '10.0.0.1', '4111 1111 1111 1111', 'likes anvils');
create table orders (id int, tenant_id text, total numeric, payer_iban text, ref text);
insert into orders values (1, 'acme', 10, 'DE89370400440532013000', '+1 555 0101');
create table countries (code text, name text);
"""


def _psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def scratch_db():
    _psql(f"drop database if exists {DB}")
    _psql(f"create database {DB}")
    _psql(SCHEMA, DB)
    yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{DB}"
    _psql(f"drop database if exists {DB} with (force)")
    _psql("drop role if exists pgw_init_check")


def _init(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy.app.init_policy", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_init_writes_a_policy_that_loads_and_checks(scratch_db, tmp_path):
    result = _init("--from", scratch_db, "--out", str(tmp_path / "policy.yaml"))
    assert result.returncode == 0, result.stderr
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy is not None
    role = _init("--policy", str(tmp_path / "policy.yaml"), "--role", "pgw_init_check", "--database", DB)
    assert role.returncode == 0, role.stderr
    _psql("drop role if exists pgw_init_check")
    _psql(role.stdout, DB)
    (tmp_path / "pgwarden.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: 6432}}\nprimary: {{host: {PG_HOST}, port: {PG_PORT}}}\n"
        "auth: {method: trust}\nbackend_auth: {user: postgres, policed: {user: pgw_init_check}}\n"
        "policies: policy.yaml\n"
    )
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "check",
            "--config",
            str(tmp_path / "pgwarden.yaml"),
            "--live",
            "--database",
            DB,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


def test_init_suggests_masks_by_name_and_by_value(scratch_db):
    text = _init("--from", scratch_db).stdout
    expected = {
        "contact: {mask: email": "sampled values look like an email",
        "ssn: {mask: redact": "the name suggests a social security number",
        "mobile: {mask: partial, keep_last: 4": "the name suggests a phone number",
        "birth_date: {mask: year": "the name suggests a birth date",
        "home_address: {mask: redact": "the name suggests a postal address",
        "last_ip: {mask: redact": "the name suggests an IP address",
        "card_number: {mask: partial, keep_last: 4": "the name suggests a card number",
        "payer_iban: {mask: partial, keep_first: 4": "the name suggests an IBAN",
        "ref: {mask: partial, keep_last: 4": "sampled values look like a phone number",
    }
    for mask, why in expected.items():
        line = next((l for l in text.splitlines() if l.strip().startswith(mask)), None)
        assert line and line.endswith(why), f"{mask}: {line}"
    assert "name:" not in text and "note:" not in text and "total:" not in text
    assert "  public.customers:" in text and "  public.orders:" in text
    assert "shared or deny: decide" in text and "#  public.countries:" in text


def test_an_unreachable_database_is_one_line():
    result = _init("--from", "postgresql://postgres:secret@127.0.0.1:1/nope")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot read postgresql://postgres:***@127.0.0.1:1/nope" in result.stderr


# --- the least-privilege role: `pgwarden init --policy` ------------------------------------------

ROLE_DB, ROLE = "pgw_init_role", "pgw_init_policed"
NOTES = """
create table notes (id serial primary key, tenant_id text not null, body text);
"""
NOTES_POLICY = """  public.notes:
    grants: {app: [select, insert]}
"""


@pytest.fixture(scope="module")
def role_db(tmp_path_factory):
    """The demo's shop and policy (plus a serial-keyed table), and init's SQL for them applied."""
    from proxy.app.demo import POLICY, shop_sql

    _psql(f"drop database if exists {ROLE_DB} with (force)")
    _psql(f"drop role if exists {ROLE}")
    _psql(f"create database {ROLE_DB}")
    _psql(shop_sql() + NOTES, ROLE_DB)
    folder = tmp_path_factory.mktemp("init-role")
    (folder / "policies").mkdir()
    (folder / "policies" / "shop.yaml").write_text(POLICY % {"admin": "postgres"} + NOTES_POLICY)
    result = _init(
        "--policy", str(folder / "policies"), "--role", ROLE, "--database", ROLE_DB, "--out", str(folder / "role.sql")
    )
    assert result.returncode == 0, result.stderr
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            "postgres",
            "-d",
            ROLE_DB,
            "-f",
            str(folder / "role.sql"),
        ],
        check=True,
        capture_output=True,
    )
    yield folder
    _psql(f"drop database if exists {ROLE_DB} with (force)")
    _psql(f"drop role if exists {ROLE}")


def test_init_role_sql_grants_exactly_the_policy(role_db):
    text = (role_db / "role.sql").read_text()
    assert f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOBYPASSRLS" in text
    grants = sorted(line for line in text.splitlines() if line.startswith("GRANT"))
    assert grants == [
        f"GRANT CONNECT ON DATABASE {ROLE_DB} TO {ROLE};",
        f"GRANT SELECT ON TABLE public.products TO {ROLE};",
        f"GRANT SELECT, INSERT ON TABLE public.notes TO {ROLE};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.customers TO {ROLE};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.orders TO {ROLE};",
        f"GRANT USAGE ON SCHEMA public TO {ROLE};",
    ]
    statements = [line for line in text.splitlines() if line.strip() and not line.startswith("--")]
    assert not [line for line in statements if "REVOKE" in line or "ALTER" in line]  # suggestions are comments


def _as_role(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            ROLE,
            "-d",
            ROLE_DB,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
    )


def test_init_role_cannot_read_what_the_policy_refuses_even_directly(role_db):
    for sql in (
        "select * from secrets",
        "select * from public.secrets",
        "delete from products",
        "create table mine (x int)",
        "set role postgres",
        "truncate customers",
        "alter table customers owner to pgw_init_policed",
        "select pg_read_file('PG_VERSION')",
        "copy customers to program 'true'",
    ):
        result = _as_role(sql)
        assert result.returncode == 1 and "ERROR:  42501:" in result.stderr, (sql, result.stderr)
    who = _as_role(
        "select current_user, current_setting('is_superuser'), "
        "(select rolbypassrls from pg_roles where rolname = current_user)"
    )
    assert who.stdout.strip() == f"{ROLE}|off|f"


def test_init_role_runs_the_demos_policed_statements_through_pgwarden(role_db):
    from tests.harness import ProxyProcess, base_config

    config = base_config(
        policies=str(role_db / "policies"), backend_auth={"user": "postgres", "policed": {"user": ROLE}}
    )
    with ProxyProcess(config, role_db / "proxy") as proxy:
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "check",
                "--config",
                str(proxy.config_path),
                "--live",
                "--database",
                ROLE_DB,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        import psycopg

        with psycopg.connect(proxy.dsn(user="acme_app", dbname=ROLE_DB), autocommit=True) as acme:
            assert acme.execute("select current_user, current_setting('is_superuser')").fetchone() == (ROLE, "off")
            rows = acme.execute("select id, name, ssn from customers order by id").fetchall()
            assert len(rows) == 10 and {r[2] for r in rows} == {"****"}
            assert acme.execute("select count(*) from products").fetchone() == (5,)
            acme.execute("insert into customers (id, name) values (99, 'Mallory')")
            acme.execute("update customers set name = 'Mal' where id = 99")
            acme.execute("insert into orders (id, customer_id, total) values (999, 99, 1)")
            acme.execute("delete from orders where id = 999")
            acme.execute("delete from customers where id = 99")
            assert acme.execute("insert into notes (body) values ('hi') returning tenant_id").fetchone() == ("acme",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused"):
                acme.execute("select * from secrets")
        with psycopg.connect(proxy.dsn(user="alice", dbname=ROLE_DB), autocommit=True) as alice:
            emails = {r[0] for r in alice.execute("select email from customers").fetchall()}
            assert emails == {"****@acme.io"}
