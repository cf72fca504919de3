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
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(PG_PORT),
                    "-U", "postgres", "-d", db, "-c", sql], check=True, capture_output=True)


@pytest.fixture(scope="module")
def scratch_db():
    _psql(f"drop database if exists {DB}")
    _psql(f"create database {DB}")
    _psql(SCHEMA, DB)
    yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{DB}"
    _psql(f"drop database if exists {DB} with (force)")


def _init(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.init_policy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_init_writes_a_policy_that_loads_and_checks(scratch_db, tmp_path):
    result = _init("--from", scratch_db, "--out", str(tmp_path / "policy.yaml"))
    assert result.returncode == 0, result.stderr
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy is not None
    (tmp_path / "pgwarden.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: 6432}}\nprimary: {{host: {PG_HOST}, port: {PG_PORT}}}\n"
        "auth: {method: trust}\nbackend_auth: {user: postgres}\npolicies: policy.yaml\n")
    check = subprocess.run([sys.executable, "-m", "proxy", "check", "--config",
                            str(tmp_path / "pgwarden.yaml"), "--live", "--database", DB],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
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
