"""SQL analysis and rewriting for tenant isolation and masking; pure functions.

PostgreSQL's own parser (pglast, libpg_query) decides what a statement is, which
relations and functions it uses, and where in the client's text they are; the
rules (api.RULES) turn that into text edits spliced into the client's bytes; the
result is re-parsed and verified (verify.py) before it is returned.

sqlglot is deliberately not used for analysis or generation: on the ORM corpus it
fails or falls back on 15% of statements and its generator changes meaning in
places (docs/architecture.md, decision 4), whereas analysing with the grammar PostgreSQL uses
leaves no room for "the proxy read it differently" — the new fragments are small
and built from the live schema by masks.py.
"""

from .api import rewrite
from .classify import classify
from .context import Column, Context, MaskSpec, Schema, TableRule, UserRoutines
from .result import Allow, Deny, Kind, Result, Rewrite

__all__ = [
    "Allow",
    "Column",
    "Context",
    "Deny",
    "Kind",
    "MaskSpec",
    "Result",
    "Rewrite",
    "Schema",
    "TableRule",
    "UserRoutines",
    "classify",
    "rewrite",
]
