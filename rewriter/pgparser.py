"""PostgreSQL's parser for the whole code base: the only module that imports pglast (libpg_query).

Everything that parses, scans, splits or fingerprints SQL goes through here, so the
grammar pgwarden judges with is one known thing: PARSER_MAJOR (pglast 8.x is
PostgreSQL 18's parser). How an older server reads the same text differently is
rewriter/server_grammar.py's business.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast, parse_sql, parser
from pglast import keywords as pglast_keywords
from pglast.parser import ParseError, fingerprint, parse_sql_json, scan, split

Node = dict[str, Any]
"""One node's fields in pglast's JSON parse tree (`parse_sql_json`), e.g. a RangeVar's {"relname": ..., "inh": ...}.

The tree is genuinely dynamic: its keys are PostgreSQL's node fields and its values nodes, lists of
nodes or scalars, so the rewriter reads them as Any and narrows with isinstance where it matters.
"""

PARSER_MAJOR = 18
"""The PostgreSQL major whose grammar pglast (pinned >=8,<9 in pyproject.toml) parses with."""


def parser_major() -> int:
    """The major of the grammar pglast was built on (from its libpg_query version string)."""
    return pglast.get_postgresql_version()[0]


def parser_keywords() -> dict[str, str]:
    """word -> category ("unreserved", "col_name", "type_func_name", "reserved") of the parser's grammar."""
    out: dict[str, str] = {}
    for name, category in (
        ("UNRESERVED_KEYWORDS", "unreserved"),
        ("COL_NAME_KEYWORDS", "col_name"),
        ("TYPE_FUNC_NAME_KEYWORDS", "type_func_name"),
        ("RESERVED_KEYWORDS", "reserved"),
    ):
        out.update(dict.fromkeys(getattr(pglast_keywords, name), category))
    return out


__all__ = [
    "PARSER_MAJOR",
    "Node",
    "ParseError",
    "ast",
    "fingerprint",
    "parse_sql",
    "parse_sql_json",
    "parser",
    "parser_keywords",
    "parser_major",
    "scan",
    "split",
]
