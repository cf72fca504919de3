"""Statements too deep or too big to judge are refused with 54001, never an exception (pure rewrite())."""

from __future__ import annotations

import json
import sys
import time

import pytest

from rewriter import Deny, classify, rewrite
from rewriter.classify import statements
from rewriter.complexity import MAX_DEPTH, MAX_NODES, tree_depth
from rewriter.pgparser import parser

from .schema import context

# Each shape nests one SQL level per n; a few per JSON level of the parse tree.
SHAPES = {
    "parentheses-arith": lambda n: "SELECT " + "(" * n + "id" + " + 1)" * n + " FROM customers",
    "arrays": lambda n: "SELECT " + "ARRAY[" * n + "1" + "]" * n,
    "scalar-subqueries": lambda n: "SELECT " + "(SELECT " * n + "1" + ")" * n,
    "from-subqueries": lambda n: "SELECT * FROM " + "(SELECT * FROM " * n + "customers" + ") s" * n,
    "case": lambda n: "SELECT " + "CASE WHEN true THEN " * n + "name" + " END" * n + " FROM customers",
    "function-calls": lambda n: "SELECT " + "lower(" * n + "name" + ")" * n + " FROM customers",
    "not-chain": lambda n: "SELECT id FROM customers WHERE " + "NOT " * n + "true",
    "and-or-nesting": lambda n: "SELECT 1 FROM customers WHERE " + "(id = 1 OR (id = 2 AND " * n + "true" + "))" * n,
    "operator-chain": lambda n: "SELECT " + " + ".join(["id"] * n) + " FROM customers",
    "unary-minus": lambda n: "SELECT " + "- " * n + "id FROM customers",
    "union-chain": lambda n: " UNION ".join(["SELECT id FROM customers"] * n),
    "exists": lambda n: "SELECT 1 WHERE " + "EXISTS (SELECT 1 FROM customers WHERE " * n + "true" + ")" * n,
    "nested-ctes": lambda n: "WITH c AS (" * n + "SELECT * FROM customers" + ") SELECT * FROM c" * n,
    "insert-values-expression": lambda n: (
        "INSERT INTO orders (id, total) VALUES (1, " + "(" * n + "1" + " + 1)" * n + ")"
    ),
    "update-where": lambda n: "UPDATE orders SET total = 1 WHERE " + "NOT " * n + "true",
}


def _nested(depth: int, fn):
    """Call fn with `depth` extra Python frames on the stack (the proxy calls the rewriter from deep in asyncio)."""
    return fn() if depth == 0 else _nested(depth - 1, fn)


def _depth_of(sql: str) -> int:
    try:
        return tree_depth(json.loads(parser.parse_sql_json(sql)))
    except RecursionError:
        return MAX_DEPTH * 10


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("n", [500, 3000, 20000])
def test_deep_statements_are_refused_as_too_complex(shape, n):
    started = time.perf_counter()
    result = rewrite(SHAPES[shape](n), context())
    assert isinstance(result, Deny) and result.sqlstate == "54001", result
    assert "too complex" in result.message and result.hint
    assert time.perf_counter() - started < 2
    assert classify(SHAPES[shape](n)).kind == "invalid"


@pytest.mark.no_cover  # coverage's tracer takes stack that the bound leaves to pgwarden (make test measures coverage)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_deepest_statement_within_the_bound_is_judged(shape):
    """At the largest nesting under MAX_DEPTH every walk (checks, rules, splice, verify) still fits
    Python's recursion limit with 150 frames already on the stack: judged, not refused as too complex."""
    low, high = 1, MAX_DEPTH  # every shape adds at least one JSON level per n
    while low < high:  # the largest n whose tree is within MAX_DEPTH
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _depth_of(SHAPES[shape](mid)) <= MAX_DEPTH else (low, mid - 1)
    n = low
    assert n >= 20, shape
    result = _nested(150, lambda: rewrite(SHAPES[shape](n), context()))
    assert not (isinstance(result, Deny) and (result.sqlstate == "54001" or result.rule == "rewrite")), result
    assert isinstance(rewrite(SHAPES[shape](n + 1), context()), Deny)


def test_recursion_beyond_pythons_limit_is_refused_as_too_complex():
    """A walk that still overflows (here: little stack left) is 54001, not an internal error."""
    sql = SHAPES["not-chain"](90)
    limit = sys.getrecursionlimit()

    depth, frame = 0, sys._getframe()
    while frame:
        depth, frame = depth + 1, frame.f_back
    result = _nested(limit - depth - 150, lambda: rewrite(sql, context()))
    assert isinstance(result, Deny) and result.sqlstate == "54001", result


def test_big_statements_are_refused_beyond_the_node_bound():
    terms = MAX_NODES // 11 + 100  # a `name = 'x'` term is 11 JSON objects
    sql = "SELECT 1 FROM customers WHERE " + " OR ".join(f"name = 'x{i}'" for i in range(terms))
    started = time.perf_counter()
    result = rewrite(sql, context())
    assert isinstance(result, Deny) and result.sqlstate == "54001" and "nodes" in result.message, result
    assert time.perf_counter() - started < 1


def test_a_long_in_list_within_the_bound_is_judged():
    sql = "SELECT * FROM customers WHERE id IN (" + ", ".join(str(i) for i in range(20000)) + ")"
    assert not isinstance(rewrite(sql, context()), Deny)


def test_statements_reads_a_plain_statement():
    assert statements("select 1")[0][0] == "SelectStmt"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_depth_is_at_most_twice_the_nodes(shape):
    """parse_tree skips the depth walk for small trees on this bound (pglast wraps nested lists)."""
    for n in (1, 2, 5, 40):
        text = parser.parse_sql_json(SHAPES[shape](n))
        assert tree_depth(json.loads(text)) <= 2 * text.count('{"') + 1
