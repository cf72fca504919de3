"""SQL analysis and rewriting for tenant isolation and masking; pure functions.

PostgreSQL's own parser (pglast) decides what a statement is and where its parts
are; edits are spliced into the client's text; the result is re-parsed and verified.
"""

from .api import rewrite
from .classify import classify
from .context import Column, Context, MaskSpec, Schema, TableRule
from .result import Allow, Deny, Kind, Result, Rewrite

__all__ = ["rewrite", "classify", "Column", "Context", "MaskSpec", "Schema", "TableRule",
           "Allow", "Deny", "Kind", "Result", "Rewrite"]
