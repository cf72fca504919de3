"""What each statement is, by PostgreSQL's own parser: statement kinds and the relations they use."""

from __future__ import annotations

from .analyse import Found, RelRef, collect, node_type
from .complexity import parse_tree
from .pgparser import Node, parser
from .refuse import Refused
from .resolve import relation_name_only
from .result import Kind

SIMPLE_KINDS = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "VariableShowStmt": "show",
    "ListenStmt": "listen",
    "UnlistenStmt": "unlisten",
    "NotifyStmt": "notify",
    "ClosePortalStmt": "close",
    "DeclareCursorStmt": "declare",
    "ExplainStmt": "explain",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "DiscardStmt": "discard",
    "ConstraintsSetStmt": "set_constraints",
    "CallStmt": "call",
    "LockStmt": "lock",
    "TruncateStmt": "truncate",
    "DoStmt": "do",
    "GrantStmt": "grant",
    "GrantRoleStmt": "grant",
    "CheckPointStmt": "other",
    "LoadStmt": "other",
    "VacuumStmt": "other",
    "ReindexStmt": "other",
    "ClusterStmt": "other",
}
SAVEPOINT_KINDS = {"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"}
TWO_PHASE_KINDS = {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
# Statements with an inner query: the field that holds it.
INNER_QUERY = {"ExplainStmt": "query", "DeclareCursorStmt": "query", "PrepareStmt": "query", "CopyStmt": "query"}


def statement_kind(kind: str, fields: Node) -> str:
    """The Kind.kind of one parsed statement.

    >>> statement_kind("TransactionStmt", {"kind": "TRANS_STMT_RELEASE"})
    'savepoint'
    """
    if kind in SIMPLE_KINDS:
        if kind == "SelectStmt" and fields.get("intoClause"):
            return "ddl"
        return SIMPLE_KINDS[kind]
    if kind == "TransactionStmt":
        sub = fields.get("kind")
        return "savepoint" if sub in SAVEPOINT_KINDS else "two_phase" if sub in TWO_PHASE_KINDS else "transaction"
    if kind == "VariableSetStmt":
        return "reset" if fields.get("kind") in ("VAR_RESET", "VAR_RESET_ALL") else "set"
    if kind == "FetchStmt":
        return "fetch"
    if kind == "CopyStmt":
        return "copy_from" if fields.get("is_from") else "copy_to"
    return "ddl"


def statements(sql: str) -> list[tuple[str, Node]]:
    """Each statement of a message as ("Type", fields); raises pglast's ParseError, or Refused (54001)
    for a statement too complex to judge."""
    tree = parse_tree(sql)
    out = []
    for raw in tree.get("stmts", ()):
        typed = node_type(raw["stmt"])
        if typed is None:
            raise ValueError("unexpected parse tree")
        out.append(typed)
    return out


def walk_statement(kind: str, fields: Node) -> Found:
    """Relations, calls and writes of one statement: every field is walked (a COPY's table aside,
    which becomes a reference of its own; SET CONSTRAINTS names constraints, not relations)."""
    found = Found()
    if kind in ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CallStmt"):
        collect({kind: fields}, frozenset(), found)
    elif kind != "ConstraintsSetStmt":
        collect({k: v for k, v in fields.items() if k != "relation"}, frozenset(), found)
    if kind == "CopyStmt" and fields.get("relation"):
        role = "copy_from" if fields.get("is_from") else "copy_to"
        found.refs.append(RelRef(fields["relation"], role, fields))
    return found


def _kind_of(kind: str, fields: Node, search_path: tuple[str, ...]) -> Kind:
    found = walk_statement(kind, fields)

    def name(r: RelRef) -> str:
        return relation_name_only(r.rv.get("schemaname"), r.rv["relname"], search_path)

    reads = tuple(dict.fromkeys(name(r) for r in found.refs if r.role in ("select", "copy_to")))
    writes = tuple(dict.fromkeys(name(r) for r in found.refs if r.role not in ("select", "copy_to")))
    setting = fields.get("name") if kind in ("VariableSetStmt", "VariableShowStmt") else None
    functions = tuple(dict.fromkeys(".".join(f) for f in found.functions))
    values = tuple(setting_values(fields.get("args") or [])) if kind == "VariableSetStmt" else ()
    return Kind(statement_kind(kind, fields), reads, writes, setting, (), functions, found.locking, values)


def setting_values(args: list[Node]) -> list[str]:
    """The literal values of a SET, as text (identifiers and strings alike, case kept)."""
    out = []
    for arg in args:
        const = arg.get("A_Const") or {}
        value = next((v for k, v in const.items() if k in ("sval", "ival", "fval", "boolval")), None)
        if isinstance(value, dict):
            out.append(str(next(iter(value.values()), 0)))
    return out


def classify(sql: str, search_path: tuple[str, ...] = ("public",)) -> Kind:
    """What a message is; several statements give kind "multi" with one Kind per part.

    >>> classify("RELEASE SAVEPOINT s1").kind, classify("SELECT * FROM t JOIN pg_class ON true").reads
    ('savepoint', ('public.t', 'pg_catalog.pg_class'))
    """
    try:
        parts = [_kind_of(k, f, search_path) for k, f in statements(sql)]
    except (parser.ParseError, Refused, RecursionError):
        return Kind("invalid")
    if len(parts) == 1:
        return parts[0]
    reads = tuple(dict.fromkeys(r for p in parts for r in p.reads))
    writes = tuple(dict.fromkeys(w for p in parts for w in p.writes))
    functions = tuple(dict.fromkeys(f for p in parts for f in p.functions))
    return Kind(
        "multi" if parts else "empty", reads, writes, None, tuple(parts), functions, any(p.locks for p in parts)
    )
