"""Statements whose answer itself tells about other tenants: EXPLAIN (plans and row counts)."""

from __future__ import annotations

from .pgparser import Node
from .refuse import Refused

EXPLAIN_HINT = (
    "Run EXPLAIN as a bypass role (an operator's connection, or pgwarden's slow_query.explain), "
    "or on a database that holds one tenant's data."
)


def explain_analyzes(fields: Node) -> bool:
    """True unless every ANALYZE option of an EXPLAIN is a literal false (PostgreSQL's defGetBoolean).

    `EXPLAIN ANALYZE`, `ANALYSE`, `(ANALYZE)`, `(ANALYZE true|on|1|'yes'...)` all count; an
    option value PostgreSQL would reject counts too (fail closed).

    >>> explain_analyzes({"options": [{"DefElem": {"defname": "analyze"}}]})
    True
    >>> explain_analyzes({"options": [{"DefElem": {"defname": "analyze", "arg": {"String": {"sval": "OFF"}}}}]})
    False
    """
    for option in fields.get("options") or ():
        elem = option.get("DefElem") or {}
        if str(elem.get("defname", "")).lower() not in ("analyze", "analyse"):
            continue
        arg = elem.get("arg")
        if not isinstance(arg, dict) or not _false(arg):
            return True
    return False


def _false(arg: Node) -> bool:
    """True for the literal values PostgreSQL reads as false in an EXPLAIN option."""
    if "Integer" in arg:
        zero: bool = (arg["Integer"] or {}).get("ival", 0) == 0
        return zero
    if "Boolean" in arg:
        return not (arg["Boolean"] or {}).get("boolval", False)
    if "String" in arg:
        return str((arg["String"] or {}).get("sval", "")).lower() in ("false", "off")
    return False


def check_explain(kind: str, fields: Node) -> None:
    """Refuse EXPLAIN in any form for a policed session (after its inner statement passed its own checks)."""
    if kind != "ExplainStmt":
        return
    if explain_analyzes(fields):
        raise Refused(
            "EXPLAIN ANALYZE is refused: its actual row counts (rows removed by a filter, "
            "index scan rows, conflicting tuples) include other tenants' rows",
            EXPLAIN_HINT,
            "statements",
        )
    raise Refused(
        "EXPLAIN is refused: its row estimates and plan choices come from planner statistics "
        "over every tenant's rows (the data of pg_stats, which is refused too)",
        EXPLAIN_HINT,
        "statements",
    )
