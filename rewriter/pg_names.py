"""Names PostgreSQL 15 defines in pg_catalog, generated from a live server (data/pg_names.json holds each query)."""

import json
from pathlib import Path

_DATA = json.loads((Path(__file__).parent / "data" / "pg_names.json").read_text())

# Every function name in pg_catalog.
BUILTIN_FUNCTIONS: frozenset[str] = frozenset(_DATA["BUILTIN_FUNCTIONS"]["names"])
# Every table, view, materialized view and foreign table name in pg_catalog.
CATALOG_RELATIONS: frozenset[str] = frozenset(_DATA["CATALOG_RELATIONS"]["names"])
