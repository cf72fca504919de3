"""Whether a statement's answer may be cached: one plain SELECT, by PostgreSQL's own parser (pure)."""

from __future__ import annotations

import dataclasses
import re

from .classify import walk_statement
from .complexity import parse_tree
from .pgparser import Node
from .readonly import READ, ReadShape, judged, select_shape, write


def cache_shape(sql: str) -> ReadShape:
    """A READ shape listing what `sql` reads and calls when it is exactly one SELECT (TABLE, VALUES,
    WITH of reads) that locks nothing, creates nothing and reads no temporary table; else a WRITE
    shape whose reason says why it is not cached. Whether the functions and tables it uses allow
    caching is the caller's to judge (proxy.cache.eligible).

    >>> s = cache_shape("SELECT lower(name) FROM public.users WHERE id = $1")
    >>> s.route, sorted(s.relations), sorted(s.functions)
    ('read', ['public.users'], ['lower'])
    >>> cache_shape("SELECT 1; SELECT 2").reason, cache_shape("EXPLAIN SELECT 1").reason
    ('several statements', 'not a SELECT')
    >>> cache_shape("SELECT * FROM t FOR UPDATE").reason
    'FOR UPDATE'
    >>> sorted(cache_shape("SELECT * FROM t WHERE at > CURRENT_DATE").functions)
    ['now']
    """
    return judged(sql, _select_shape)


def _select_shape(sql: str) -> ReadShape:
    parts = parse_tree(sql).get("stmts", ())
    if len(parts) != 1:
        return write("several statements" if parts else "empty")
    stmt = parts[0]["stmt"]
    if "SelectStmt" not in stmt:
        return write("not a SELECT")
    fields = stmt["SelectStmt"]
    shape = select_shape(fields, walk_statement("SelectStmt", fields))
    return _time_and_chance(fields, shape, sql) if shape.route == READ else write(shape.reason)


# SQLValueFunction operators whose value is the clock's (stable, as now() is).
_CLOCK = frozenset(
    "SVFOP_" + name
    for name in [
        "CURRENT_DATE",
        "CURRENT_TIME",
        "CURRENT_TIME_N",
        "CURRENT_TIMESTAMP",
        "CURRENT_TIMESTAMP_N",
        "LOCALTIME",
        "LOCALTIME_N",
        "LOCALTIMESTAMP",
        "LOCALTIMESTAMP_N",
    ]
)
# A string PostgreSQL's date/time input reads as the clock ('now', 'today', ...), in a literal of the text.
CLOCK_WORDS = re.compile(r"'\s*(?:now|today|tomorrow|yesterday)\s*'", re.IGNORECASE)


def _time_and_chance(tree: Node, shape: ReadShape, sql: str) -> ReadShape:
    """`shape` with `now` among its functions when the statement reads the clock by other means than a
    call (CURRENT_TIMESTAMP, 'now'::timestamptz); WRITE for TABLESAMPLE without REPEATABLE (random)."""
    clock = CLOCK_WORDS.search(sql) is not None
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            sample = node.get("RangeTableSample")
            if isinstance(sample, dict) and sample.get("repeatable") is None:
                return write("TABLESAMPLE without REPEATABLE")
            value = node.get("SQLValueFunction")
            if isinstance(value, dict) and value.get("op") in _CLOCK:
                clock = True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return dataclasses.replace(shape, functions=shape.functions | {"now"}) if clock else shape
