"""Walk pglast's JSON parse tree of one statement: relation references (CTE-aware), calls, writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .locking import locks
from .pgparser import Node

WRITE_ROLES = {"InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete", "MergeStmt": "merge"}


@dataclass(frozen=True, slots=True)
class RelRef:
    """One relation reference: the RangeVar's fields, and how the statement uses it.

    `role` is select, insert, update, delete or merge; `owner` is the fields of the
    writing statement for a write target; `sampled` is set under TABLESAMPLE; `locked` when
    a FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE clause locks its rows (see `locks`).
    """

    rv: Node
    role: str
    owner: Node | None = None
    sampled: bool = False
    locked: bool = False

    @property
    def ref_name(self) -> str:
        """The name the statement uses for it: its alias, else the relation name."""
        alias = self.rv.get("alias")
        name: str = alias["aliasname"] if alias else self.rv["relname"]
        return name

    @property
    def statement(self) -> Node:
        """`owner`, for a reference the caller knows is a write (or COPY) target."""
        assert self.owner is not None, "not a write target"
        return self.owner


@dataclass
class Found:
    """Everything the walk found in one statement (filled in place by `collect`)."""

    refs: list[RelRef] = field(default_factory=list)
    functions: list[tuple[str, ...]] = field(default_factory=list)
    settings: list[list[Node]] = field(default_factory=list)  # arguments of set_config() calls
    operators: list[tuple[str, ...]] = field(default_factory=list)  # schema-qualified: OPERATOR(s.op)
    bare_operators: list[str] = field(default_factory=list)  # looked up by search_path, implicit ones too
    setting_reads: list[list[Node]] = field(default_factory=list)  # arguments of current_setting() calls
    field_names: list[str] = field(default_factory=list)  # x.name and (expr).name: a column or a function
    problems: list[str] = field(default_factory=list)
    locking: bool = False
    qualified_columns: list[Node] = field(default_factory=list)  # ColumnRefs of schema.table.column
    aliases: list[str] = field(default_factory=list)  # names of CTEs, subqueries, functions, joins
    type_names: list[tuple[str, ...]] = field(default_factory=list)  # casts, typed literals, column definitions
    column_names: list[str] = field(default_factory=list)  # columns read or written by name (or whole rows)
    star: bool = False  # `*`, `t.*` or NATURAL JOIN: every column of a relation
    params: list[int] = field(default_factory=list)  # the number of each parameter reference ($n), once per use


Handler = Callable[[Node, frozenset[str], Found], None]
"""What `collect` calls for one node type: its fields, the CTE names in scope, what was found so far."""


def node_type(node: object) -> tuple[str, Node] | None:
    """("Type", fields) for a typed JSON node, None for lists, scalars and plain structs."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key[:1].isupper() and isinstance(value, dict):
            return key, value
    return None


def returning(fields: Node) -> list[Node]:
    """The RETURNING items (ResTarget nodes) of a writing statement."""
    items: list[Node] = (fields.get("returningClause") or {}).get("exprs", [])
    return items


def names(nodes: list[Node] | None) -> tuple[str, ...]:
    """The svals of a list of String nodes (function and operator names)."""
    return tuple(n["String"]["sval"] for n in nodes or () if "String" in n)


def collect(node: object, scope: frozenset[str], found: Found) -> None:
    """Walk `node`, CTE names in `scope` shadowing unqualified relation names."""
    if isinstance(node, list):
        for item in node:
            collect(item, scope, found)
        return
    typed = node_type(node)
    if typed is None:
        if isinstance(node, dict):
            if "relname" in node or "funcname" in node:  # in a place no handler knows: fail closed
                found.problems.append("a relation or call pgwarden cannot place")
            if "names" in node and "typemod" in node:  # a TypeName held in a field of its own
                found.type_names.append(names(node["names"]))
            for value in node.values():
                collect(value, scope, found)
        return
    kind, fields = typed
    handler = HANDLERS.get(kind)
    if handler is not None:
        handler(fields, scope, found)
        return
    for value in fields.values():
        collect(value, scope, found)


def with_scope(fields: Node, scope: frozenset[str], found: Found) -> frozenset[str]:
    """Walk a statement's WITH list; return the scope its body sees.

    A CTE body sees the CTEs before it (all of them, itself included, under RECURSIVE).
    """
    clause = fields.get("withClause")
    if not clause:
        return scope
    ctes = [c["CommonTableExpr"] for c in clause["ctes"]]
    recursive = bool(clause.get("recursive"))
    all_names = frozenset(c["ctename"] for c in ctes)
    found.aliases += all_names
    for i, cte in enumerate(ctes):
        seen = all_names if recursive else frozenset(c["ctename"] for c in ctes[:i])
        collect(cte["ctequery"], scope | seen, found)
        if cte.get("search_clause") or cte.get("cycle_clause"):
            collect([cte.get("search_clause"), cte.get("cycle_clause")], scope | seen, found)
    return scope | all_names


def _range_var(fields: Node, scope: frozenset[str], found: Found, sampled: bool = False) -> None:
    if "schemaname" not in fields and "catalogname" not in fields and fields["relname"] in scope:
        return
    if "catalogname" in fields:
        found.problems.append("a three-part relation name")
    found.refs.append(RelRef(fields, "select", sampled=sampled))


def _select(fields: Node, scope: frozenset[str], found: Found) -> None:
    if fields.get("intoClause"):
        found.problems.append("SELECT INTO (it creates a table)")
    start = len(found.refs)
    inner = with_scope(fields, scope, found)
    for key, value in fields.items():
        if key in ("larg", "rarg") and isinstance(value, dict) and node_type(value) is None:
            _select(value, inner, found)  # a set operation's branch (unwrapped): its own WITH scope
        elif key not in ("withClause", "intoClause", "lockingClause"):
            collect(value, inner, found)
    if fields.get("lockingClause"):
        found.locking = True
        mark_locked(found, start, locks(fields))


def mark_locked(found: Found, start: int, targets: list[Node]) -> None:
    """Flag the references found since `start` whose RangeVar is one of `targets` (by identity)."""
    ids = {id(rv) for rv in targets}
    for i in range(start, len(found.refs)):
        if id(found.refs[i].rv) in ids:
            found.refs[i] = replace(found.refs[i], locked=True)


def _write(kind: str) -> Handler:
    def handle(fields: Node, scope: frozenset[str], found: Found) -> None:
        inner = with_scope(fields, scope, found)
        found.refs.append(RelRef(fields["relation"], WRITE_ROLES[kind], fields))
        for key, value in fields.items():  # every field but the target: nothing goes unwalked
            if key not in ("relation", "withClause"):
                collect(value, inner, found)

    return handle


def _sample(fields: Node, scope: frozenset[str], found: Found) -> None:
    typed = node_type(fields["relation"])
    if typed and typed[0] == "RangeVar":
        _range_var(typed[1], scope, found, sampled=True)
    else:
        collect(fields["relation"], scope, found)
    collect([fields.get("method"), fields.get("args"), fields.get("repeatable")], scope, found)


def _func(fields: Node, scope: frozenset[str], found: Found) -> None:
    name = names(fields["funcname"])
    found.functions.append(name)
    if name in (("set_config",), ("pg_catalog", "set_config")):
        found.settings.append(fields.get("args") or [])
    if name in (("current_setting",), ("pg_catalog", "current_setting")):
        found.setting_reads.append(fields.get("args") or [])
    for key, value in fields.items():
        if key != "funcname":
            collect(value, scope, found)


# BETWEEN is not an operator: PostgreSQL expands it into comparisons it looks up by name.
BETWEEN_OPERATORS = ("<=", ">=", "<", ">")


def _operator(op: tuple[str, ...], found: Found) -> None:
    if len(op) > 1:
        found.operators.append(op)
    elif op:
        found.bare_operators.append(op[0])


def _a_expr(fields: Node, scope: frozenset[str], found: Found) -> None:
    if fields.get("kind", "").startswith(("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN")):
        found.bare_operators += BETWEEN_OPERATORS
    else:
        _operator(names(fields.get("name")), found)
    collect([fields.get("lexpr"), fields.get("rexpr")], scope, found)


def _sort_by(fields: Node, scope: frozenset[str], found: Found) -> None:
    _operator(names(fields.get("useOp")), found)
    collect(fields.get("node"), scope, found)


def _sub_link(fields: Node, scope: frozenset[str], found: Found) -> None:
    """x IN (SELECT ...) compares with "=", looked up by name like any operator."""
    if fields.get("subLinkType") in ("ANY_SUBLINK", "ALL_SUBLINK", "ROWCOMPARE_SUBLINK"):
        _operator(names(fields.get("operName")) or ("=",), found)
    collect([fields.get("testexpr"), fields.get("subselect")], scope, found)


def _case(fields: Node, scope: frozenset[str], found: Found) -> None:
    """CASE x WHEN y compares x = y."""
    if fields.get("arg"):
        found.bare_operators.append("=")
    for value in fields.values():
        collect(value, scope, found)


def _join(fields: Node, scope: frozenset[str], found: Found) -> None:
    """JOIN ... USING and NATURAL JOIN compare the shared columns with "="."""
    if fields.get("usingClause") or fields.get("isNatural"):
        found.bare_operators.append("=")
    found.column_names += names(fields.get("usingClause"))
    found.star = found.star or bool(fields.get("isNatural"))
    _aliased(fields, scope, found)


def _indirection(fields: Node, scope: frozenset[str], found: Found) -> None:
    found.field_names += names(fields.get("indirection"))
    collect([fields.get("arg"), fields.get("indirection")], scope, found)


def _unexpected(what: str) -> Handler:
    def handle(fields: Node, scope: frozenset[str], found: Found) -> None:
        found.problems.append(what)

    return handle


def _column_ref(fields: Node, scope: frozenset[str], found: Found) -> None:
    last = fields["fields"][-1]
    if "A_Star" in last:
        found.star = True
    found.column_names += names([last])
    if len(fields["fields"]) >= 3:
        found.qualified_columns.append(fields)
    if len(fields["fields"]) >= 2:
        found.field_names += names(fields["fields"][-1:])


def _aliased(fields: Node, scope: frozenset[str], found: Found) -> None:
    found.aliases += [fields[k]["aliasname"] for k in ("alias", "join_using_alias") if fields.get(k)]
    for value in fields.values():
        collect(value, scope, found)


def _named(key: str) -> Handler:
    """A node naming a column it writes or compares (ResTarget of INSERT/UPDATE, IndexElem), walked on."""

    def handle(fields: Node, scope: frozenset[str], found: Found) -> None:
        if fields.get(key):
            found.column_names.append(fields[key])
        for value in fields.values():
            collect(value, scope, found)

    return handle


def _type_name(fields: Node, scope: frozenset[str], found: Found) -> None:
    found.type_names.append(names(fields.get("names")))
    collect(fields.get("typmods"), scope, found)


def _leaf(fields: Node, scope: frozenset[str], found: Found) -> None:
    """Constants and parameters hold no relation and no call: nothing to walk."""


HANDLERS: dict[str, Handler] = {
    "ColumnRef": _column_ref,
    "RangeSubselect": _aliased,
    "RangeFunction": _aliased,
    "JoinExpr": _join,
    "RangeTableFunc": _aliased,
    "JsonTable": _aliased,
    "SortBy": _sort_by,
    "SubLink": _sub_link,
    "CaseExpr": _case,
    "A_Indirection": _indirection,
    "A_Const": _leaf,
    "ParamRef": lambda f, s, found: found.params.append(f.get("number", 0)),
    "String": _leaf,
    "Integer": _leaf,
    "Float": _leaf,
    "RangeVar": lambda f, s, found: _range_var(f, s, found),
    "SelectStmt": _select,
    "InsertStmt": _write("InsertStmt"),
    "UpdateStmt": _write("UpdateStmt"),
    "DeleteStmt": _write("DeleteStmt"),
    "MergeStmt": _write("MergeStmt"),
    "RangeTableSample": _sample,
    "FuncCall": _func,
    "ResTarget": _named("name"),
    "IndexElem": _named("name"),
    "TypeName": _type_name,
    "A_Expr": _a_expr,
    "IntoClause": _unexpected("a clause that creates a table"),
    "CallStmt": lambda f, s, found: _func(f["funccall"], s, found),
}
