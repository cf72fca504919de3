"""`pgwarden init`: a starter policy from a live schema, and the SQL of the role policed sessions log in as."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field

# (mask YAML, name pattern, value pattern): the first row whose name or sampled value matches wins.
PII = [
    ("{mask: email, roles: [analyst]}", r"e_?mail", r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", "an email"),
    (
        "{mask: redact, roles: [analyst, app]}",
        r"ssn|social_sec|national_id|tax_id",
        r"^\d{3}-\d{2}-\d{4}$",
        "a social security number",
    ),
    ("{mask: partial, keep_last: 4, roles: [analyst]}", r"card|cc_num|pan$", r"^(\d[ -]?){13,19}$", "a card number"),
    ("{mask: partial, keep_first: 4, roles: [analyst]}", r"iban", r"^[A-Z]{2}\d{2}[A-Z0-9 ]{11,30}$", "an IBAN"),
    (
        "{mask: partial, keep_last: 4, roles: [analyst]}",
        r"phone|mobile|fax|msisdn",
        r"^\+?[\d ()./-]{7,20}$",
        "a phone number",
    ),
    ("{mask: year, roles: [analyst]}", r"birth|born|dob", None, "a birth date"),
    ("{mask: redact, roles: [analyst]}", r"(^|_)ip(_|$)|ip_?addr", r"^\d{1,3}(\.\d{1,3}){3}$", "an IP address"),
    ("{mask: redact, roles: [analyst]}", r"address|street|postcode|zip", None, "a postal address"),
]
DATE_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}
TEXT_TYPES = {"text", "character varying", "character", "inet", "cidr", "citext"}

COLUMNS = """
select c.table_schema, c.table_name, c.column_name, c.data_type
from information_schema.columns c join information_schema.tables t
  using (table_catalog, table_schema, table_name)
where t.table_type = 'BASE TABLE'
  and c.table_schema not in ('pg_catalog', 'information_schema') and c.table_schema !~ '^pg_'
order by 1, 2, c.ordinal_position
"""


@dataclass
class Table:
    """One table of the live schema and what init suggests for it."""

    schema: str
    name: str
    columns: dict[str, str] = field(default_factory=dict)
    masks: list[tuple[str, str, str]] = field(default_factory=list)  # (column, mask yaml, why)


def _ident(name: str) -> str:
    return f'"{name}"' if not re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else name


def suggest(column: str, data_type: str, values: list[str]) -> tuple[str, str] | None:
    """The mask for a column and why (name match, else value pattern), or None when it looks harmless."""
    kinds = [row for row in PII if data_type in (DATE_TYPES if row[3] == "a birth date" else TEXT_TYPES)]
    for mask, name_re, _, what in kinds:
        if re.search(name_re, column, re.IGNORECASE):
            return mask, f"the name suggests {what}"
    for mask, _, value_re, what in kinds:
        if value_re and values and all(re.match(value_re, v, re.IGNORECASE) for v in values):
            return mask, f"sampled values look like {what}"
    return None


async def introspect(url: str, sample: int = 20) -> list[Table]:
    """Tables, their columns and suggested masks, from a few sampled rows of each table."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tables: dict[tuple[str, str], Table] = {}
        for row in await conn.fetch(COLUMNS):
            key = (row["table_schema"], row["table_name"])
            tables.setdefault(key, Table(*key)).columns[row["column_name"]] = row["data_type"]
        for table in tables.values():
            rows = await conn.fetch(f"select * from {_ident(table.schema)}.{_ident(table.name)} limit {sample}")
            for column, data_type in table.columns.items():
                values = [str(r[column]) for r in rows if r[column] is not None]
                found = suggest(column, data_type, values)
                if found:
                    table.masks.append((column, *found))
        return list(tables.values())
    finally:
        await conn.close()


def render(tables: list[Table], tenant_column: str, source: str) -> str:
    """The starter policy as YAML, with a comment for each decision left to a human."""
    scoped = [t for t in tables if tenant_column in t.columns]
    other = [t for t in tables if tenant_column not in t.columns]
    out = [
        f"# Starter policy written by `pgwarden init` from {source}.",
        "# Review every line: masks are guesses from column names and sampled values.",
        "version: 1",
        "tenancy:",
        f"  column: {tenant_column}",
        "  sources:",
        "    - setting: pgwarden.tenant      # the app runs SET pgwarden.tenant = '<tenant>'",
        "      trusted_users: [app]",
        "roles:",
        "  app: {users: [app]}",
        "  analyst: {users: []}",
        "  admin: {users: [postgres], bypass: true}",
        "default: deny",
        "tables:" if scoped else "tables: {}",
    ]
    for table in scoped:
        out += [
            f"  {table.schema}.{table.name}:",
            "    grants: {app: [select, insert, update, delete], analyst: [select]}",
        ]
        if table.masks:
            out.append("    masks:")
            out += [f"      {_ident(c)}: {mask}  # {why}" for c, mask, why in table.masks]
    if other:
        out += [
            "",
            f"# Tables without a {tenant_column} column: shared or deny: decide.",
            "# Uncomment to share a table with every role; leave it out to refuse it.",
        ]
        for table in other:
            out += [f"#  {table.schema}.{table.name}:", "#    tenant_column: null", '#    grants: {"*": [select]}']
            out += [f"#    # {c}: {mask}  # {why}" for c, mask, why in table.masks]
    return "\n".join(out) + "\n"


def _safe(url: str) -> str:
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", url)


def cmd_init(args: argparse.Namespace) -> int:
    if args.policy:
        return _role(args)
    if not args.from_url:
        print(
            "pgwarden init: give --from DATABASE_URL (a starter policy) or --policy FILE "
            "(the SQL of the role policed sessions log in as)",
            file=sys.stderr,
        )
        return 2
    try:
        tables = asyncio.run(introspect(args.from_url))
    except (OSError, Exception) as exc:  # asyncpg raises its own errors for a refused login
        print(
            f"pgwarden init: cannot read {_safe(args.from_url)}: {exc} (check the URL, user and password)",
            file=sys.stderr,
        )
        return 1
    text = render(tables, args.tenant_column, _safe(args.from_url))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(
            f"wrote {args.out}: review it, then run pgwarden init --policy {args.out} for the "
            "role policed sessions log in as, and pgwarden check",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def _role(args: argparse.Namespace) -> int:
    """The SQL creating the least-privilege role, with the grants of the policy at --policy."""
    from policies.load import load_policy
    from policies.source import SourceError
    from proxy.enforce.role_sql import role_sql

    try:
        policy = load_policy(args.policy)
    except SourceError as exc:
        print(f"pgwarden init: the policy has {len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    text = role_sql(policy, args.role, args.database).text()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(
            f"wrote {args.out}: review it, run it with psql as a superuser, and set "
            f"backend_auth.policed.user: {args.role}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="from_url",
        metavar="DATABASE_URL",
        help="write a starter policy from this database: postgresql://user:password@host:port/dbname",
    )
    parser.add_argument("--tenant-column", default="tenant_id")
    parser.add_argument(
        "--policy",
        metavar="PATH",
        help="instead, write the SQL that creates the "
        "least-privilege role policed sessions log in as, granted what this policy "
        "(file or folder) grants its non-bypass roles",
    )
    parser.add_argument("--role", default="pgwarden_policed", help="with --policy: the role's name (pgwarden_policed)")
    parser.add_argument("--database", help="with --policy: the database to GRANT CONNECT on")
    parser.add_argument("--out", help="write the policy (or SQL) here instead of stdout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgwarden init", description=__doc__)
    add_arguments(parser)
    return cmd_init(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
