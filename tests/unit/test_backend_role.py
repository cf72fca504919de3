"""The policed role's fitness rules and the SQL `pgwarden init --policy` writes for it (pure, no database)."""

from __future__ import annotations

import doctest
import textwrap

import pytest

from policies.load import load_policy
from proxy.enforce import role_sql
from proxy.enforce.role_sql import table_privileges
from proxy.pooling import backend_role
from proxy.pooling.backend_role import RoleFacts, unfit

POLICY = """
version: 1
tenancy: {column: tenant_id, sources: [{users: {a: acme}}]}
roles:
  app: {users: [a]}
  writer: {users: [w]}
  admin: {users: [postgres], bypass: true}
tables:
  public.customers:
    grants: {app: [select], admin: [select, insert, update, delete]}
  public.audit_log:
    grants: {writer: [insert]}
  public.only_admin:
    grants: {admin: [select, delete]}
  '"Weird Schema"."Order Lines"':
    tenant_column: null
    grants: {"*": [select]}
functions:
  allow: [public.order_total]
"""


@pytest.fixture()
def policy(tmp_path):
    (tmp_path / "p.yaml").write_text(textwrap.dedent(POLICY))
    return load_policy(tmp_path / "p.yaml")


@pytest.mark.parametrize("module", [backend_role, role_sql])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_privileges_are_the_union_over_policed_roles_only(policy):
    assert table_privileges(policy) == {
        "public.customers": ("SELECT",),  # admin's writes are bypass: not granted
        "public.audit_log": ("SELECT", "INSERT"),  # the tenant filter and RETURNING read it
        "Weird Schema.Order Lines": ("SELECT",),  # "*" is every policed role
    }  # public.only_admin: bypass only, nothing


def test_role_sql_creates_a_powerless_role_and_quotes_names(policy):
    sql = role_sql.role_sql(policy, "App Policed", "my db")
    assert (
        'CREATE ROLE "App Policed" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE '
        "NOREPLICATION NOINHERIT;" in sql.create
    )
    grants = [line for line in sql.grants.splitlines() if line.startswith("GRANT")]
    assert grants == [
        'GRANT CONNECT ON DATABASE "my db" TO "App Policed";',
        'GRANT USAGE ON SCHEMA "Weird Schema" TO "App Policed";',
        'GRANT USAGE ON SCHEMA public TO "App Policed";',
        'GRANT SELECT ON TABLE "Weird Schema"."Order Lines" TO "App Policed";',
        'GRANT SELECT, INSERT ON TABLE public.audit_log TO "App Policed";',
        'GRANT SELECT ON TABLE public.customers TO "App Policed";',
        'GRANT EXECUTE ON FUNCTION public.order_total TO "App Policed";',
    ]
    assert "only_admin" not in sql.text()
    assert "'App Policed'" in sql.grants  # the sequence loop's %I gets the name as a literal


@pytest.mark.parametrize(
    "facts, fit",
    [
        (RoleFacts("r", False, False), True),
        (RoleFacts("r", True, False), False),
        (RoleFacts("r", False, True), False),
        (RoleFacts("r", False, False, ("pg_super",)), False),
        (RoleFacts("r", False, False, (), ("public.t",)), False),
    ],
)
def test_unfit(facts, fit):
    assert (unfit(facts, "db") is None) == fit


def test_many_owned_relations_are_summed_up():
    reason = unfit(RoleFacts("r", False, False, (), tuple(f"public.t{i}" for i in range(9))), "db")
    assert "public.t0, public.t1, public.t2, public.t3, public.t4 and 4 more" in reason


def test_create_on_a_schema_is_unfit():
    reason = unfit(RoleFacts("r", False, False, creates_in=("public",)), "db")
    assert "may create objects in schema(s) public" in reason
