"""The publication the consumer reads: created when missing, widened (never narrowed) when it lacks a table."""

from __future__ import annotations

from typing import NamedTuple

from proxy.changes.link import PgLink, QueryFailed, quote_ident, quote_literal


class TableName(NamedTuple):
    schema: str
    table: str

    @property
    def qualified(self) -> str:
        """schema.table as the consumer reports it (catalog spelling, unquoted)."""
        return f"{self.schema}.{self.table}"

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"


def table_name(text: str) -> TableName:
    """'schema.table' or 'table' (in public), as spelled in the catalog.

    >>> table_name("shop.orders").sql, table_name("items").qualified
    ('"shop"."orders"', 'public.items')
    """
    schema, dot, table = text.partition(".")
    return TableName(schema, table) if dot else TableName("public", schema)


class PublicationMismatch(QueryFailed):
    """The publication exists but cannot cover what the consumer needs; the consumer must not run on it."""


async def ensure_publication(link: PgLink, name: str, tables: tuple[str, ...]) -> None:
    """Make `name` publish every table in `tables` (all tables when empty), creating or widening it.

    Widening only (ALTER PUBLICATION ... ADD TABLE) keeps it safe for other pgwarden instances
    that share the publication with a longer list. Two instances racing to create it: the loser
    gets 42710 and its session is retried.
    """
    wanted = [table_name(t) for t in tables]
    rows = await link.query(f"SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = {quote_literal(name)}")
    if not rows:
        target = "ALL TABLES" if not wanted else "TABLE " + ", ".join(t.sql for t in wanted)
        # a partition's rows are reported under the partitioned table the cache names
        await link.query(
            f"CREATE PUBLICATION {quote_ident(name)} FOR {target} WITH (publish_via_partition_root = true)"
        )
        return
    if rows[0][0] == "t":
        return
    if not wanted:
        raise PublicationMismatch(
            "55000", f'publication "{name}" exists for some tables only, and the consumer was asked for all tables'
        )
    published = await link.query(
        f"SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {quote_literal(name)}"
    )
    have = {TableName(str(s), str(t)) for s, t in published}
    missing = [t for t in wanted if t not in have]
    if missing:
        await link.query(f"ALTER PUBLICATION {quote_ident(name)} ADD TABLE " + ", ".join(t.sql for t in missing))


# Each DDL command (GRANT and REVOKE too) writes a transactional message the consumer reads (DDL_PREFIX):
# schema and privilege changes that bypass pgwarden are in no table's rows.
_DDL_FUNCTION = """
CREATE OR REPLACE FUNCTION public.pgwarden_cache_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN PERFORM pg_catalog.pg_logical_emit_message(true, 'pgwarden.ddl', tg_tag); END $fn$
"""


async def ensure_ddl_trigger(link: PgLink) -> bool:
    """Create the event trigger `pgwarden_cache_ddl` when missing; False when it is missing and this
    role is no superuser (event triggers need one): DDL that bypasses pgwarden is then not seen."""
    rows = await link.query("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgwarden_cache_ddl'")
    if rows:
        return True
    rows = await link.query("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    if not rows or rows[0][0] != "t":
        return False
    await link.query(_DDL_FUNCTION)
    await link.query(
        "CREATE EVENT TRIGGER pgwarden_cache_ddl ON ddl_command_end EXECUTE FUNCTION public.pgwarden_cache_ddl()"
    )
    return True
