"""The live schema, read through the control plane (asyncpg): columns of every user table and view,
the functions and operators defined outside the system schemas, and what PostgreSQL calls unnamed."""

from __future__ import annotations

import logging
import ssl
from typing import NamedTuple

import asyncpg

from proxy.enforce.catalog_read import Row, read_catalog
from rewriter.context import Column, UserRoutines

log = logging.getLogger("pgwarden.schema")

_COLUMNS = """
select n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
where c.relkind in ('r', 'p', 'v', 'm', 'f')
  and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
  and n.nspname not like 'pg_temp_%' and n.nspname not like 'pg_toast_temp_%'
order by n.nspname, c.relname, a.attnum
"""

# Functions and operators outside pg_catalog and information_schema: an unqualified call or
# operator may resolve to one of them (PostgreSQL picks the best match on the search_path).
_SYSTEM = """n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp_%'"""
_FUNCTIONS = f"""
select distinct n.nspname, p.proname
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where {_SYSTEM}
"""
# An operator's function, and the planner's restriction and join estimators when they are not built-ins.
_OPERATORS = f"""
select n.nspname, o.oprname, fn.nspname, f.proname
from pg_operator o join pg_namespace n on n.oid = o.oprnamespace
left join pg_proc f on f.oid = o.oprcode left join pg_namespace fn on fn.oid = f.pronamespace
where {_SYSTEM}
union all
select n.nspname, o.oprname, fn.nspname, f.proname
from pg_operator o join pg_namespace n on n.oid = o.oprnamespace
join pg_proc f on f.oid in (o.oprrest, o.oprjoin) and f.oid >= 16384 join pg_namespace fn on fn.oid = f.pronamespace
where {_SYSTEM}
"""

Schema = dict[str, tuple[Column, ...]]


class LiveSchema(NamedTuple):
    """What the control plane read of one database."""

    schema: Schema
    search_path: tuple[str, ...]
    routines: UserRoutines
    server_major: int  # the backend's PostgreSQL major (server_version_num // 10000)


async def load_schema(
    host: str,
    port: int,
    user: str,
    password: str | None,
    database: str,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> LiveSchema:
    """Every user table, view and partition ({"schema.relation": columns in table order}),
    the search_path a backend of this role starts with, the user-defined functions and operators,
    and the backend's PostgreSQL major."""
    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        ssl=tls or False,
        timeout=timeout,
        statement_cache_size=0,
    )
    try:
        rows = await conn.fetch(_COLUMNS, timeout=timeout)
        path = await conn.fetchval("select current_setting('search_path')", timeout=timeout)
        functions = await conn.fetch(_FUNCTIONS, timeout=timeout)
        operators = await conn.fetch(_OPERATORS, timeout=timeout)
        catalog = await read_catalog(conn, timeout)
        version_num = int(await conn.fetchval("select current_setting('server_version_num')", timeout=timeout))
    finally:
        await conn.close()
    schema: dict[str, list[Column]] = {}
    for nsp, rel, col, typ in rows:
        schema.setdefault(f"{nsp}.{rel}", []).append(Column(col, typ))
    search_path = tuple(p.strip().strip('"') for p in path.split(",") if p.strip())
    found = routines(functions, operators)
    return LiveSchema(
        {name: tuple(cols) for name, cols in schema.items()},
        search_path,
        UserRoutines(found.functions, found.operators, catalog),
        version_num // 10000,
    )


def routines(functions: list[Row], operators: list[Row]) -> UserRoutines:
    """UserRoutines from rows (schema, name) and (schema, symbol, function schema, function name).

    >>> r = routines([("public", "upper")], [("public", "===", "public", "leak_op"), ("s", "@@", None, None)])
    >>> sorted(r.functions), dict(r.operators)
    (['public.upper'], {'public.===': frozenset({'public.leak_op'}), 's.@@': frozenset({''})})
    """
    ops: dict[str, set[str]] = {}
    for nsp, symbol, fnsp, fname in operators:
        ops.setdefault(f"{nsp}.{symbol}", set()).add(f"{fnsp}.{fname}" if fname else "")
    return UserRoutines(
        frozenset(f"{nsp}.{name}" for nsp, name in functions), {key: frozenset(funcs) for key, funcs in ops.items()}
    )
