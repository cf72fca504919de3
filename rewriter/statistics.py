"""Statistics and sizes of relations: they count every tenant's rows, so policed sessions may not read them.

The class, by name, as PostgreSQL 15 defines it (tests/policy/test_statistics.py enumerates
pg_class and pg_proc of a live server and checks each one is refused):
  - relations pg_stat_*, pg_statio_*, pg_stats*, pg_statistic, pg_statistic_ext_data
    (activity counters: rows inserted/updated/deleted, live and dead tuples, scans, blocks;
    planner statistics: sampled values), in pg_catalog or any other schema (pg_stat_statements
    is installed in one of the user's choosing);
  - functions pg_stat_* (pg_stat_get_*, pg_stat_get_xact_*, resets, pg_stat_file ...) and the
    size functions (pg_relation_size, pg_total_relation_size, pg_table_size, pg_indexes_size,
    pg_database_size, pg_tablespace_size).
Left readable: pg_statistic_ext (definitions of extended statistics objects, no values;
psql's \\d reads it) and pg_class.reltuples / relpages (approximate totals ORMs' and tools'
introspection reads alongside the schema).
"""

from __future__ import annotations

from .refuse import Refused

STATISTICS_PREFIXES = ("pg_stat_", "pg_statio_", "pg_stats")
STATISTICS_RELATIONS = frozenset({"pg_statistic", "pg_statistic_ext_data"})
SIZE_FUNCTIONS = frozenset(
    {
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_database_size",
        "pg_tablespace_size",
    }
)


def statistics_relation(name: str) -> bool:
    """True for a "schema.relation" holding statistics over table rows.

    >>> [statistics_relation(n) for n in ("pg_catalog.pg_stat_xact_user_tables", "public.pg_stat_statements",
    ...                                     "pg_catalog.pg_statistic_ext", "pg_catalog.pg_class")]
    [True, True, False, False]
    """
    relname = name.rpartition(".")[2]
    return relname.startswith(STATISTICS_PREFIXES) or relname in STATISTICS_RELATIONS


def statistics_function(name: str) -> bool:
    """True for a built-in function that reports statistics or sizes of relations.

    >>> [statistics_function(n) for n in ("pg_stat_get_live_tuples", "pg_table_size", "pg_column_size")]
    [True, True, False]
    """
    return name.startswith("pg_stat_") or name in SIZE_FUNCTIONS


def check_statistics_relation(name: str) -> None:
    """Refuse reading a statistics relation (see the module docstring)."""
    if statistics_relation(name):
        raise Refused(
            f'reading "{name}" is refused: its statistics count every tenant\'s rows (and in transaction '
            "pooling, a previous client's not yet reported counts)",
            "Only bypass roles may read statistics views; use count(*) over your own rows instead.",
            "catalogs",
        )
