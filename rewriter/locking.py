"""Which relations a SELECT's FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE clauses lock (as PostgreSQL decides)."""

from __future__ import annotations

from .pgparser import Node


def _typed(node: object) -> tuple[str, Node]:
    """("Type", fields) of a typed JSON node, ("", {}) for anything else."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if isinstance(value, dict):
            return key, value
    return "", {}


def locks(select: Node) -> list[Node]:
    """The RangeVar fields whose rows the locking clauses of `select` lock.

    As PostgreSQL's transformLockingClause: without OF, every table in the FROM clause
    (inside joins, and pushed down into subqueries in FROM); with OF, the FROM items of
    those names (a subquery's tables, all of them). Subqueries elsewhere (WHERE, the
    select list) and WITH queries are not locked by it. A set operation's branches are
    included although PostgreSQL refuses FOR UPDATE there (more is never less safe).

    >>> from pglast import parser; import json
    >>> s = json.loads(parser.parse_sql_json("select 1 from a join b x on true, (select * from c) s for update of x"))
    >>> [rv["relname"] for rv in locks(s["stmts"][0]["stmt"]["SelectStmt"])]
    ['b']
    """
    out: list[Node] = []
    if select.get("lockingClause") and (select.get("larg") or select.get("rarg")):
        return _all_tables({"SelectStmt": select})  # PostgreSQL refuses it; lock all if it did not
    for clause in select.get("lockingClause") or ():
        named = [_typed(rv)[1].get("relname") for rv in _typed(clause)[1].get("lockedRels") or ()]
        for item in select.get("fromClause") or ():
            out += _from_item(item, frozenset(n for n in named if n) if named else None)
    return out


def _from_item(node: object, names: frozenset[str] | None) -> list[Node]:
    """The RangeVars a FROM item contributes: all (`names` None) or those referenced by one of `names`."""
    kind, fields = _typed(node)
    alias = (fields.get("alias") or {}).get("aliasname")
    if kind == "RangeVar":
        return [fields] if names is None or (alias or fields["relname"]) in names else []
    if kind == "RangeTableSample":
        return _from_item(fields.get("relation"), names)
    if kind == "JoinExpr":
        if names is not None and alias in names:
            names = None
        return _from_item(fields.get("larg"), names) + _from_item(fields.get("rarg"), names)
    if kind == "RangeSubselect" and (names is None or alias in names):
        return _all_tables(fields.get("subquery"))
    return []


def _all_tables(node: object) -> list[Node]:
    """Every table in the FROM clauses of a query and of its FROM subqueries (set operations: both sides)."""
    kind, fields = _typed(node)
    if kind != "SelectStmt":
        return []
    if fields.get("larg") or fields.get("rarg"):
        return _all_tables({"SelectStmt": fields.get("larg") or {}}) + _all_tables(
            {"SelectStmt": fields.get("rarg") or {}}
        )
    return [rv for item in fields.get("fromClause") or () for rv in _from_item(item, None)]
