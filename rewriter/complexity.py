"""Bounds on the statements pgwarden judges: parse-tree size and nesting depth (SQLSTATE 54001 beyond them).

Every walk of a parse tree in the rewriter is recursive, and judging runs on the proxy's
event loop: a statement nested deeper than MAX_DEPTH JSON levels, or with more than
MAX_NODES nodes, is refused before any walk starts instead of exhausting Python's
recursion limit or stalling every other client. The ORM corpus (66,775 statements)
reaches depth 115 and 42,033 nodes; judging costs about 7 µs per node.
"""

from __future__ import annotations

import json
from typing import Any

from .pgparser import Node, parser
from .refuse import Refused

MAX_NODES = 100_000
MAX_DEPTH = 300
# PostgreSQL's own parser gives up on deep nesting with these messages.
PARSER_LIMITS = ("stack depth limit exceeded", "memory exhausted")
HINT = (
    "Split the statement, flatten deeply nested expressions (long IN lists or ORs can be "
    "= ANY($1) with an array parameter), or run it as a bypass role."
)


def too_complex(why: str) -> Refused:
    """The refusal of a statement beyond the bounds (SQLSTATE 54001, statement too complex)."""
    return Refused(f"statement refused: it is too complex for pgwarden to judge ({why})", HINT, "statements", "54001")


def tree_depth(tree: Node | list[Any]) -> int:
    """The nesting depth of a JSON tree (dicts and lists), walked without recursion.

    >>> tree_depth({"a": [{"b": 1}]}), tree_depth([])
    (3, 1)
    """
    best, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        best = max(best, depth)
        values = node.values() if isinstance(node, dict) else node
        stack += [(v, depth + 1) for v in values if isinstance(v, (dict, list))]
    return best


def parse_tree(sql: str) -> Node:
    """pglast's JSON parse tree of `sql`; Refused (54001) beyond the bounds, ParseError if it does not parse."""
    try:
        text = parser.parse_sql_json(sql)
    except parser.ParseError as exc:
        if any(limit in str(exc) for limit in PARSER_LIMITS):
            raise too_complex(f"PostgreSQL's parser: {exc}") from None
        raise
    nodes = text.count('{"')  # every JSON object opens so (a string ending in "{" adds at most one)
    if nodes > MAX_NODES:
        raise too_complex(f"its parse tree has about {nodes} nodes, more than {MAX_NODES}")
    try:
        tree: Node = json.loads(text)
    except RecursionError:
        raise too_complex(f"nested deeper than {MAX_DEPTH} levels") from None
    # pglast wraps nested lists in {"List": ...}: a tree is at most 2 * nodes + 1 deep.
    if 2 * nodes + 1 > MAX_DEPTH and tree_depth(tree) > MAX_DEPTH:
        raise too_complex(f"nested deeper than {MAX_DEPTH} levels")
    return tree
