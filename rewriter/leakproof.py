"""The leak-free judgement: may PostgreSQL run a statement's conditions before the tenant filter?

PostgreSQL orders a scan's conditions by cost, and pulls a plain subquery (pgwarden's
protected projection) up into the query around it, so the tenant equality can end up
after the client's own conditions. A condition that can raise an error, write a setting
or call anything at all can then meet another tenant's row. For row-level security
PostgreSQL lets only leakproof conditions run first; pgwarden does the same by an
allowlist: `first_leak` names the first construct of a statement that is not provably
leak-free, and the rewrite then fences the protected projections (`OFFSET 0`) and
guards the conditions of writes behind the tenant predicate.

Leak-free: comparisons (`= <> != < > <= >=`, IS [NOT] DISTINCT FROM, IN, BETWEEN,
`= ANY($1)`) between column references, constants and parameters (a cast of a
constant or parameter included), AND / OR / NOT, IS [NOT] NULL, IS TRUE and the like,
LIKE / ILIKE with a constant pattern, boolean columns, EXISTS / IN over subqueries
that are leak-free themselves. Judged everywhere in the statement (WHERE, JOIN ON,
HAVING, ON CONFLICT, MERGE, CTEs, subqueries and every clause of theirs), except what
PostgreSQL evaluates only on rows that passed every filter: the outermost select list,
ORDER BY, GROUP BY, DISTINCT, window and LIMIT clauses, UPDATE's SET list, RETURNING
(subqueries inside them are still judged). A subquery's own ORDER BY, LIMIT, OFFSET,
GROUP BY, DISTINCT and window clauses are judged like conditions: a correlated subquery
runs them once per outer row, before the outer tenant filter.
"""

from __future__ import annotations

from collections.abc import Callable

from .analyse import node_type
from .pgparser import Node

COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
# Parts of the outermost query evaluated only on rows that passed every condition.
AFTER_FILTER = frozenset(
    {
        "targetList",
        "sortClause",
        "groupClause",
        "distinctClause",
        "windowClause",
        "limitCount",
        "limitOffset",
        "lockingClause",
        "returningClause",
        "returningList",
        "valuesLists",
    }
)
# Parts of a nested query that hold no expression (a correlated subquery's ORDER BY and
# LIMIT do: they run per outer row, before the outer tenant filter, so they are judged).
NEVER_CONDITIONS = frozenset({"lockingClause", "limitOption", "op"})
INNER_QUERY = {"ExplainStmt": "query", "DeclareCursorStmt": "query", "PrepareStmt": "query", "CopyStmt": "query"}
LEAVES = frozenset({"A_Const", "ParamRef", "SQLValueFunction"})
# Subqueries that must return at most one row: an error from one is an oracle on the row it is evaluated for.
_ONE_ROW = frozenset({"EXPR_SUBLINK", "ROWCOMPARE_SUBLINK", "MULTIEXPR_SUBLINK"})
RANGE_KEYS = ("relname", "aliasname", "ctename")


def first_leak(kind: str, fields: Node) -> str | None:
    """The first construct of a statement that is not provably leak-free, or None.

    >>> from .classify import statements
    >>> def judge(sql): return first_leak(*statements(sql)[0])
    >>> judge("SELECT upper(name) FROM customers WHERE id = $1 AND name <> 'x' ORDER BY lower(name)")
    >>> judge("SELECT id FROM customers WHERE id > 10 AND has_schema_privilege(name, 'USAGE')")
    'a call of has_schema_privilege()'
    >>> judge("UPDATE orders SET total = total * 2 WHERE id = $1::int")
    >>> judge("SELECT 1 FROM orders WHERE total::int > 0")
    'a cast of a column or expression'
    """
    if kind in INNER_QUERY:
        inner = fields.get(INNER_QUERY[kind])
        typed = node_type(inner)
        return None if typed is None else first_leak(*typed)
    judge = Judge(range_names(fields))
    if kind == "SelectStmt":
        return judge.top_select(fields)
    if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
        return judge.top_write(fields)
    if kind == "MergeStmt":
        return judge.expr({k: v for k, v in fields.items() if k != "relation"})
    return None


def range_names(node: object) -> frozenset[str]:
    """Every relation name, alias and CTE name in a tree: a column reference by such a name
    may be a whole row (whose comparison can fail)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            out.update(item[k] for k in RANGE_KEYS if isinstance(item.get(k), str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return frozenset(out)


class Judge:
    """The walk of one statement; `ranges` are the names a whole-row reference could use."""

    def __init__(self, ranges: frozenset[str]) -> None:
        self.ranges = ranges

    def top_select(self, fields: Node) -> str | None:
        if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
            branches = [unwrapped(fields[k]) for k in ("larg", "rarg") if fields.get(k)]
            rest = {k: v for k, v in fields.items() if k not in ("larg", "rarg")}
            return next(filter(None, [self.top_select(b) for b in branches] + [self.split(rest)]), None)
        return self.split(fields)

    def top_write(self, fields: Node) -> str | None:
        conflict = fields.get("onConflictClause") or {}
        rest = {k: v for k, v in fields.items() if k not in ("relation", "selectStmt", "onConflictClause")}
        found = [
            self.split(rest),
            self.after(conflict.get("targetList")),
            self.expr(conflict.get("whereClause")),
            self.after(conflict.get("infer")),
        ]
        if fields.get("selectStmt"):
            found.insert(0, self.top_select(unwrapped(fields["selectStmt"])))
        return next(filter(None, found), None)

    def split(self, fields: Node) -> str | None:
        """The outermost query's fields: conditions judged, after-filter parts searched for subqueries."""
        for key, value in fields.items():
            leak = self.after(value) if key in AFTER_FILTER else self.expr(value)
            if leak:
                return leak
        return None

    def after(self, node: object) -> str | None:
        """An after-filter part: only the subqueries in it are judged."""
        if isinstance(node, list):
            return next(filter(None, (self.after(v) for v in node)), None)
        typed = node_type(node)
        if typed and typed[0] == "SubLink":
            return self.expr(typed[1].get("subselect")) or self.after(typed[1].get("testexpr"))
        if isinstance(node, dict):
            return next(filter(None, (self.after(v) for v in node.values())), None)
        return None

    def expr(self, node: object) -> str | None:
        """A condition position: every node must be on the allowlist."""
        if isinstance(node, list):
            return next(filter(None, (self.expr(v) for v in node)), None)
        if node is None or not isinstance(node, dict):
            return None
        typed = node_type(node)
        if typed is None:
            return next(filter(None, (self.expr(v) for v in node.values())), None)
        kind, fields = typed
        handler: Callable[[Node], str | None] | None = getattr(self, "n_" + kind, None)
        if handler is None:
            return f"{kind} (not on the leak-free list)"
        return handler(fields)

    def operand(self, node: object) -> str | None:
        """A comparison's side: a column, a constant, a parameter (or a cast of one)."""
        typed = node_type(node)
        if typed is None:
            return "an operand pgwarden cannot read"
        if typed[0] in ("ColumnRef", "TypeCast", "A_ArrayExpr") or typed[0] in LEAVES:
            return self.expr(node)
        return self.expr(node) or f"{typed[0]} compared"

    def operands(self, node: object) -> str | None:
        items = node["List"]["items"] if isinstance(node, dict) and "List" in node else [node]
        return next(filter(None, (self.operand(i) for i in items)), None)

    # --- the allowlist -----------------------------------------------------------------------

    def n_SelectStmt(self, fields: Node) -> str | None:
        return self.expr({k: v for k, v in fields.items() if k not in NEVER_CONDITIONS})

    def n_SortBy(self, fields: Node) -> str | None:
        """A nested query's sort key: leak-free as a column, constant or parameter, by the default order."""
        if fields.get("useOp"):
            return "ORDER BY ... USING"
        return self.expr(fields.get("node"))

    def n_InsertStmt(self, fields: Node) -> str | None:
        """A data-modifying CTE: judged like a statement of its own (PostgreSQL never inlines it)."""
        return self.top_write(fields)

    n_UpdateStmt = n_DeleteStmt = n_InsertStmt

    def n_ColumnRef(self, fields: Node) -> str | None:
        parts = fields["fields"]
        last = parts[-1]
        if "A_Star" in last:
            return None if len(parts) <= 2 else "a qualified *"
        if last.get("String", {}).get("sval") in self.ranges:
            return "a reference that may be a whole row"
        return None

    def n_TypeCast(self, fields: Node) -> str | None:
        typed = node_type(fields.get("arg"))
        if typed and (
            typed[0] in ("A_Const", "ParamRef") or (typed[0] == "TypeCast" and not self.n_TypeCast(typed[1]))
        ):
            return None
        return "a cast of a column or expression"

    def n_A_Expr(self, fields: Node) -> str | None:
        kind = fields.get("kind", "")
        op = "".join(n["String"]["sval"] for n in fields.get("name") or () if "String" in n)
        if kind in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT", "AEXPR_IN", "AEXPR_OP_ANY", "AEXPR_OP_ALL"):
            if op not in COMPARISONS or len(fields.get("name") or ()) != 1:
                return f"the operator {op}"
            if fields.get("lexpr") is None:
                return f"the prefix operator {op}"
            return self.operand(fields.get("lexpr")) or self.operands(fields.get("rexpr"))
        if kind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM"):
            return self.operand(fields.get("lexpr")) or self.operands(fields.get("rexpr"))
        if kind in ("AEXPR_LIKE", "AEXPR_ILIKE"):
            return self.operand(fields.get("lexpr")) or like_pattern(fields.get("rexpr"))
        return f"{kind.removeprefix('AEXPR_')} {op}".strip()

    def n_BoolExpr(self, fields: Node) -> str | None:
        return self.expr(fields.get("args"))

    def n_NullTest(self, fields: Node) -> str | None:
        return self.expr(fields.get("arg"))

    def n_BooleanTest(self, fields: Node) -> str | None:
        return self.expr(fields.get("arg"))

    def n_SubLink(self, fields: Node) -> str | None:
        if fields.get("subLinkType") in _ONE_ROW:  # (which rows make it fail depends on the outer row's values)
            return "a scalar subquery (it fails when it returns more than one row)"
        if fields.get("operName") and "".join(names_of(fields["operName"])) not in COMPARISONS:
            return "a subquery compared by another operator"
        test = fields.get("testexpr")
        return (self.operands(test) if test is not None else None) or self.expr(fields.get("subselect"))

    def n_FuncCall(self, fields: Node) -> str | None:
        return f"a call of {'.'.join(names_of(fields.get('funcname')))}()"

    def n_List(self, fields: Node) -> str | None:
        """A row of VALUES (or an IN list): each item judged."""
        return self.expr(fields.get("items"))

    def n_A_ArrayExpr(self, fields: Node) -> str | None:
        """ARRAY[...] of columns, constants and parameters (`id = ANY(ARRAY[$1, $2])`)."""
        return next(filter(None, (self.operand(e) for e in fields.get("elements") or ())), None)

    def n_RangeFunction(self, fields: Node) -> str | None:
        calls = [f for item in fields.get("functions") or () for f in (item.get("List") or {}).get("items", ())]
        return next(filter(None, (self.expr(c) for c in calls)), None) or "a function in FROM"

    def n_JoinExpr(self, fields: Node) -> str | None:
        return self.expr([fields.get("larg"), fields.get("rarg"), fields.get("quals")])

    def n_RangeSubselect(self, fields: Node) -> str | None:
        return self.expr(fields.get("subquery"))

    def n_WithClause(self, fields: Node) -> str | None:
        return self.expr(fields.get("ctes"))

    def n_CommonTableExpr(self, fields: Node) -> str | None:
        if fields.get("search_clause") or fields.get("cycle_clause"):
            return "a CTE with SEARCH or CYCLE"
        return self.expr(fields.get("ctequery"))

    def n_ResTarget(self, fields: Node) -> str | None:
        return "an assignment to a subscript or field" if fields.get("indirection") else self.expr(fields.get("val"))

    def n_RangeVar(self, fields: Node) -> str | None:
        return None

    def n_A_Const(self, fields: Node) -> str | None:
        return None

    n_ParamRef = n_SQLValueFunction = n_String = n_A_Star = n_Alias = n_A_Const


def unwrapped(node: Node) -> Node:
    """A SelectStmt's fields, whether or not pglast wrapped them in their node type."""
    typed = node_type(node)
    return typed[1] if typed else node


def names_of(nodes: list[Node] | None) -> list[str]:
    return [n["String"]["sval"] for n in nodes or () if "String" in n]


def like_pattern(node: object) -> str | None:
    """A LIKE pattern is leak-free as a string constant that does not end in a lone escape
    (a malformed pattern fails on the first row that meets it, whichever tenant's)."""
    sval = ((node or {}).get("A_Const") or {}).get("sval") if isinstance(node, dict) else None
    if not isinstance(sval, dict):
        return "a LIKE with a computed or parameter pattern"
    text = sval.get("sval", "")
    trailing = len(text) - len(text.rstrip("\\"))
    return "a LIKE pattern ending in an escape" if trailing % 2 else None
