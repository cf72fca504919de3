"""The least-privilege role policed test sessions log in as, granted what a policy needs by `pgwarden init`'s SQL."""

from __future__ import annotations

import hashlib
import tempfile
import textwrap
from pathlib import Path

import psycopg

from policies.load import load_policy
from proxy.enforce.role_sql import ATTRIBUTES, role_sql
from rewriter.pgparser import split
from tests.harness import PG_HOST, PG_PORT

ROLE = "pgw_policed"  # a prefix: each policy's role is ROLE_<digest of the policy> (role_for)
DIRECT = f"host={PG_HOST} port={PG_PORT} user=postgres dbname={{}}"
_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedObject,
)


def role_for(policy_text: str) -> str:
    """The test role for one policy text: each policy has its own, so a test that starts a proxy
    with another policy never takes grants away from a proxy still running with this one."""
    return f"{ROLE}_{hashlib.sha256(textwrap.dedent(policy_text).encode()).hexdigest()[:10]}"


def backend_auth(role: str) -> dict:
    """`backend_auth` for a test config: bypass roles as postgres, policed sessions as `role`."""
    return {"user": "postgres", "policed": {"user": role}}


def ensure_role(role: str) -> None:
    """Create the role (once per cluster) with init's attributes."""
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        if conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone() is None:
            conn.execute(f'create role "{role}" {ATTRIBUTES}')


def grant(policy_text: str, databases: list[str] | None = None, role: str | None = None) -> str:
    """Give `role` (default: the policy's own, role_for) exactly what the policy grants its
    policed roles, in every test database (or those named), taking back what it held before;
    objects a database lacks are skipped. Returns the role."""
    role = role or role_for(policy_text)
    ensure_role(role)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(textwrap.dedent(policy_text))
        policy = load_policy(path)
    with psycopg.connect(DIRECT.format("postgres"), autocommit=True) as conn:
        names = databases or [
            r[0] for r in conn.execute("select datname from pg_database where not datistemplate and datallowconn")
        ]
    for database in names:
        _grant_in(database, role_sql(policy, role, database).grants, role)
    return role


def _grant_in(database: str, grants: str, role: str) -> None:
    with psycopg.connect(DIRECT.format(database), autocommit=True) as conn:
        schemas = [
            r[0]
            for r in conn.execute(
                "select nspname from pg_namespace where nspname not in ('pg_catalog', 'information_schema') "
                "and nspname !~ '^pg_'"
            )
        ]
        for schema in schemas:
            for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
                conn.execute(f'revoke all on all {kind} in schema "{schema}" from "{role}"')
            conn.execute(f'revoke all on schema "{schema}" from "{role}"')
        for statement in split(grants):
            try:
                conn.execute(statement)
            except _MISSING:
                pass
