"""The live schema, read through the control plane (asyncpg): columns of every user table and view."""

from __future__ import annotations

import logging
import ssl

import asyncpg

from rewriter.context import Column

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


Schema = dict[str, tuple[Column, ...]]


async def load_schema(host: str, port: int, user: str, password: str | None, database: str,
                      tls: ssl.SSLContext | None = None, timeout: float = 10.0
                      ) -> tuple[Schema, tuple[str, ...]]:
    """Every user table, view and partition ({"schema.relation": columns in table order}),
    and the search_path a backend of this role starts with."""
    conn = await asyncpg.connect(host=host, port=port, user=user, password=password,
                                 database=database, ssl=tls or False, timeout=timeout,
                                 statement_cache_size=0)
    try:
        rows = await conn.fetch(_COLUMNS, timeout=timeout)
        path = await conn.fetchval("select current_setting('search_path')", timeout=timeout)
    finally:
        await conn.close()
    schema: dict[str, list[Column]] = {}
    for nsp, rel, col, typ in rows:
        schema.setdefault(f"{nsp}.{rel}", []).append(Column(col, typ))
    search_path = tuple(p.strip().strip('"') for p in path.split(",") if p.strip())
    return {name: tuple(cols) for name, cols in schema.items()}, search_path
