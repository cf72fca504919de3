"""The SQL that creates the least-privilege role policed sessions log in as, from a policy's grants."""

from __future__ import annotations

import re
from dataclasses import dataclass

from policies.load import Policy

# The policy's grant names are PostgreSQL's privilege names; pgwarden's rewrites of reads,
# updates, deletes and RETURNING read the table, so every granted action needs SELECT too.
PRIVILEGES = {"select": "SELECT", "insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
ATTRIBUTES = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT"


@dataclass(frozen=True, slots=True)
class RoleSql:
    """`create` runs once per cluster; `grants` once in each database the policy is used with."""

    role: str
    create: str
    grants: str

    def text(self) -> str:
        return self.create + "\n" + self.grants


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted unless it is a plain lower-case name.

    >>> quote_ident("orders"), quote_ident("Order Lines")
    ('orders', '"Order Lines"')
    """
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _qualified(name: str) -> str:
    schema, _, rel = name.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(rel)}"


def table_privileges(policy: Policy) -> dict[str, tuple[str, ...]]:
    """Per table, the union of the privileges the policy grants its non-bypass roles (and "*")."""
    policed = {name for name, role in policy.roles.items() if not role.bypass} | {"*"}
    out = {}
    for table, spec in sorted(policy.tables.items()):
        actions = {a for role, granted in spec.grants.items() if role in policed for a in granted}
        if actions:
            actions.add("select")  # the tenant filter and RETURNING read the table
            out[table] = tuple(PRIVILEGES[a] for a in PRIVILEGES if a in actions)
    return out


def role_sql(policy: Policy, role: str, database: str | None = None) -> RoleSql:
    """CREATE ROLE and the GRANTs of exactly what the policy lets policed sessions do, nothing else."""
    who = quote_ident(role)
    create = (
        f"-- the role pgwarden's policed sessions log in as (backend_auth.policed.user)\n"
        f"CREATE ROLE {who} {ATTRIBUTES};\n"
        f"-- give it a password for md5 or SCRAM backends: \\password {who}\n"
    )
    privileges = table_privileges(policy)
    lines = [f"-- in database {quote_ident(database) if database else '<each database the policy serves>'}"]
    if database:
        lines.append(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {who};")
    schemas = sorted(
        {t.split(".", 1)[0] for t in privileges} | {f.split(".", 1)[0] for f in policy.functions if "." in f}
    )
    lines += [f"GRANT USAGE ON SCHEMA {quote_ident(s)} TO {who};" for s in schemas]
    for table, privs in privileges.items():
        lines.append(f"GRANT {', '.join(privs)} ON TABLE {_qualified(table)} TO {who};")
    inserted = [t for t, privs in privileges.items() if "INSERT" in privs]
    if inserted:
        lines.append(_sequences(inserted, role))
    lines += [f"GRANT EXECUTE ON FUNCTION {_qualified(f)} TO {who};" for f in sorted(policy.functions)]
    lines.append(REVOKE_NOTE)
    return RoleSql(role, create, "\n".join(lines) + "\n")


def _sequences(tables: list[str], role: str) -> str:
    """USAGE on the sequences behind serial and identity columns of tables policed sessions insert into."""
    names = ", ".join(_literal(_qualified(t)) for t in tables)
    return (
        "DO $$ DECLARE s text; BEGIN\n"
        "  FOR s IN SELECT d.objid::regclass::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid\n"
        f"    WHERE c.relkind = 'S' AND d.deptype IN ('a', 'i') AND d.refobjid IN "
        f"(SELECT unnest(ARRAY[{names}])::regclass)\n"
        f"  LOOP EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', s, {_literal(role)}); "
        "END LOOP;\nEND $$;"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# PUBLIC's EXECUTE on user functions is left alone (the reasons: docs/security.md)
REVOKE_NOTE = (
    "-- PostgreSQL 14 and older let PUBLIC create objects in schema public, and pgwarden\n"
    "-- refuses a role that can: REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
    "-- PostgreSQL lets PUBLIC (so this role too) execute every function; pgwarden refuses\n"
    "-- user functions not in functions.allow. Revoking PUBLIC's EXECUTE would also take it\n"
    "-- from every other role and break column defaults and checks that call them, so it is\n"
    "-- left to you: REVOKE EXECUTE ON FUNCTION <schema.function> FROM PUBLIC;"
)
