"""Whether a statement may run on a streaming replica: its read-only shape, by PostgreSQL's own parser."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .analyse import Found
from .checks import TEXT_SETTINGS, constant_text
from .classify import SIMPLE_KINDS, statements, walk_statement
from .pgparser import Node, parser
from .refuse import Refused
from .side_channels import explain_analyzes

READ, WRITE, SESSION = "read", "write", "session"

# `/* pgwarden:primary */` before the statement, maybe after other comments.
PRIMARY_COMMENT = re.compile(
    r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*(?:(?!\*/).)*\*/)*?/\*\s*pgwarden\s*:\s*primary\s*\*/",
    re.IGNORECASE | re.DOTALL,
)
# Built-ins marked stable that still need the primary: they assign a transaction id.
PRIMARY_FUNCTIONS = frozenset({"txid_current", "pg_current_xact_id"})
# Statements that change or show the session (no data): they go where the session's transaction is.
SESSION_KINDS = frozenset({"VariableSetStmt", "VariableShowStmt", "DiscardStmt", "DeallocateStmt"})
BEGIN_KINDS = frozenset({"TRANS_STMT_BEGIN", "TRANS_STMT_START"})
END_KINDS = frozenset({"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"})
SESSION_TRANSACTION_KINDS = (
    BEGIN_KINDS
    | END_KINDS
    | {
        "TRANS_STMT_SAVEPOINT",
        "TRANS_STMT_RELEASE",
        "TRANS_STMT_ROLLBACK_TO",
    }
)
# Names of DDL statements whose node type does not say them.
STATEMENT_NAMES = {
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "RenameStmt": "ALTER ... RENAME",
    "CreateEnumStmt": "CREATE TYPE AS ENUM",
    "CompositeTypeStmt": "CREATE TYPE",
    "DefineStmt": "CREATE",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
}
# SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION (a VAR_SET_MULTI with these names).
TRANSACTION_SETS = frozenset({"TRANSACTION", "SESSION CHARACTERISTICS"})


@dataclass(frozen=True, slots=True)
class ReadShape:
    """What a message is for routing, and every function, operator and relation a READ one uses.

    READ is read-only provided every function, operator and relation listed is non-volatile
    (proxy.routing.volatility judges that against the catalog); WRITE must go to the primary;
    SESSION changes or shows the session only (SET, SHOW, BEGIN, COMMIT, ...).
    Names are as PostgreSQL's parser folds them (unquoted lower-cased, quoted kept).
    `field_calls` are the names used in field notation (`t.f`, `(expr).f`): a column, or a call of f.
    """

    route: str
    reason: str
    begins: str | None = None
    ends: bool = False
    functions: frozenset[str] = frozenset()
    operators: frozenset[str] = frozenset()
    relations: frozenset[str] = frozenset()
    field_calls: frozenset[str] = field(default=frozenset())


def write(reason: str) -> ReadShape:
    """A WRITE shape for `reason`."""
    return ReadShape(WRITE, reason)


def read_shape(sql: str) -> ReadShape:
    """How `sql` (one message, maybe several statements) may be routed.

    >>> s = read_shape("SELECT lower(name) FROM public.users u WHERE u.id = $1")
    >>> s.route, sorted(s.functions), sorted(s.operators), sorted(s.relations)
    ('read', ['lower'], ['='], ['public.users'])
    >>> read_shape("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x").reason
    'data-modifying WITH'
    >>> read_shape("BEGIN READ ONLY").begins, read_shape("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY").begins
    ('read_only', 'read_write')
    """
    return judged(sql, _message_shape)


def _message_shape(sql: str) -> ReadShape:
    parts = [statement_shape(kind, fields) for kind, fields in statements(sql)]
    if not parts:
        return ReadShape(SESSION, "empty")
    if len(parts) == 1:
        return parts[0]
    return combined(parts)


def judged(sql: str, shape_of: Callable[[str], ReadShape]) -> ReadShape:
    """`shape_of(sql)`, failing closed: WRITE for a `/* pgwarden:primary */` comment, a text that does
    not parse, one too complex to judge, or a tree the walk does not know."""
    if PRIMARY_COMMENT.match(sql):
        return write("pgwarden:primary comment")
    try:
        return shape_of(sql)
    except (parser.ParseError, ValueError):
        return write("does not parse")
    except (Refused, RecursionError):
        return write("too complex to judge")
    except (KeyError, TypeError, AttributeError, IndexError):  # a tree the walk does not know: fail closed
        return write("cannot judge")


def combined(parts: list[ReadShape]) -> ReadShape:
    """Several statements in one message: READ or SESSION only if all are; else WRITE."""
    routes = {p.route for p in parts}
    if routes == {READ}:
        return ReadShape(
            READ,
            "several reads",
            functions=frozenset().union(*(p.functions for p in parts)),
            operators=frozenset().union(*(p.operators for p in parts)),
            relations=frozenset().union(*(p.relations for p in parts)),
            field_calls=frozenset().union(*(p.field_calls for p in parts)),
        )
    if routes == {SESSION}:
        begins, ends = None, False
        for p in parts:  # the transaction state after the last statement
            if p.ends:
                begins, ends = None, True
            if p.begins:
                begins = p.begins
        return ReadShape(SESSION, "several session statements", begins, ends)
    if WRITE in routes:
        return write(next(p.reason for p in parts if p.route == WRITE))
    return write("session and read statements in one message")


def statement_shape(kind: str, fields: Node) -> ReadShape:
    """The shape of one parsed statement."""
    if kind == "SelectStmt":
        return select_shape(fields, walk_statement(kind, fields))
    if kind == "ExplainStmt":
        inner = statement_shape(*typed(fields.get("query")))
        if inner.route == READ:
            return inner
        prefix = "EXPLAIN ANALYZE" if explain_analyzes(fields) else "EXPLAIN"
        return write(f"{prefix} of {inner.reason}")
    if kind == "CopyStmt":
        return copy_shape(fields)
    if kind == "TransactionStmt":
        return transaction_shape(fields)
    if kind in SESSION_KINDS:
        return session_shape(kind, fields)
    return write(statement_name(kind, fields))


def typed(node: object) -> tuple[str, Node]:
    """("Type", fields) of a statement node; ("", {}) for anything else."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if isinstance(value, dict):
            return key, value
    return "", {}


def statement_name(kind: str, fields: Node) -> str:
    """A short name for a statement that writes (or is no plain read): "INSERT", "CREATE TABLE AS", ...

    >>> statement_name("DeclareCursorStmt", {}), statement_name("CreateTableAsStmt", {})
    ('DECLARE', 'CREATE TABLE AS')
    """
    if kind == "CreateTableAsStmt":
        return "CREATE MATERIALIZED VIEW" if fields.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"
    if kind == "TransactionStmt":
        sub = str(fields.get("kind", "")).removeprefix("TRANS_STMT_").replace("_", " ")
        return "PREPARE TRANSACTION" if sub == "PREPARE" else sub
    if kind in STATEMENT_NAMES:
        return STATEMENT_NAMES[kind]
    if kind in SIMPLE_KINDS and SIMPLE_KINDS[kind] not in ("other", "grant"):
        return SIMPLE_KINDS[kind].replace("_", " ").upper()
    words = re.findall(r"[A-Z][a-z]*", kind.removesuffix("Stmt"))
    return " ".join(words).upper() or "unknown statement"


def select_shape(fields: Node, found: Found) -> ReadShape:
    """SELECT / TABLE / VALUES / WITH: READ unless it writes, locks rows or creates a table."""
    if fields.get("intoClause") or any("SELECT INTO" in p for p in found.problems):
        return write("SELECT INTO")
    if any(r.role not in ("select", "copy_to") for r in found.refs):
        return write("data-modifying WITH")
    if found.locking:
        return write("FOR UPDATE")
    if found.problems:
        return write(found.problems[0])
    return used(found)


def used(found: Found) -> ReadShape:
    """A READ shape listing what `found` calls and reads; WRITE for a temporary relation."""
    relations = frozenset(
        ".".join(p for p in (r.rv.get("schemaname"), r.rv["relname"]) if p)
        for r in found.refs
        if r.role in ("select", "copy_to")
    )
    for name in sorted(relations):
        if name.startswith(("pg_temp", "pg_toast_temp")):
            return write(f"reads temporary table {name}")
    functions = frozenset(".".join(f) for f in found.functions)
    for name in sorted(functions):
        if name.removeprefix("pg_catalog.") in PRIMARY_FUNCTIONS:
            return write(f"calls {name}(), which assigns a transaction id")
    operators = frozenset(found.bare_operators) | frozenset(".".join(op) for op in found.operators)
    return ReadShape(
        READ,
        "read",
        functions=functions,
        operators=operators,
        relations=relations,
        field_calls=frozenset(found.field_names),
    )


def copy_shape(fields: Node) -> ReadShape:
    """COPY ... TO STDOUT of a table or of a read is READ; COPY FROM and COPY TO a file or program are not."""
    if fields.get("is_from"):
        return write("COPY FROM")
    if fields.get("filename") or fields.get("is_program"):
        return write("COPY TO a file or program")
    query = fields.get("query")
    if query:
        inner = statement_shape(*typed(query))
        return inner if inner.route == READ else write(f"COPY of {inner.reason}")
    found = walk_statement("CopyStmt", fields)
    if found.problems:
        return write(found.problems[0])
    return used(found)


def transaction_shape(fields: Node) -> ReadShape:
    """BEGIN/START TRANSACTION, COMMIT/END/ROLLBACK/ABORT, savepoints: SESSION; two-phase commit: WRITE."""
    sub = str(fields.get("kind", ""))
    if sub not in SESSION_TRANSACTION_KINDS:
        return write(statement_name("TransactionStmt", fields))
    if sub in BEGIN_KINDS:
        read_only = transaction_read_only(fields.get("options") or [])
        return ReadShape(SESSION, "BEGIN", begins="read_only" if read_only else "read_write")
    return ReadShape(SESSION, sub.removeprefix("TRANS_STMT_").replace("_", " "), ends=sub in END_KINDS)


def transaction_read_only(options: list[Node]) -> bool:
    """True when transaction options say READ ONLY and not ISOLATION LEVEL SERIALIZABLE (the last of each wins).

    >>> transaction_read_only([])
    False
    """
    read_only, serializable = characteristics(options)
    return bool(read_only) and not serializable


def characteristics(options: list[Node]) -> tuple[bool | None, bool]:
    """(READ ONLY given: True, READ WRITE: False, neither: None; ISOLATION LEVEL SERIALIZABLE given)."""
    read_only: bool | None = None
    serializable = False
    for option in options:
        elem = option.get("DefElem") or {}
        value = constant_text(elem.get("arg"))
        if elem.get("defname") == "transaction_read_only":
            read_only = value not in (None, "0", "false", "off")
        elif elem.get("defname") == "transaction_isolation":
            serializable = value == "serializable"
    return read_only, serializable


def session_shape(kind: str, fields: Node) -> ReadShape:
    """SET/RESET/SHOW/DISCARD/DEALLOCATE: SESSION, but see `primary_setting`."""
    if kind == "VariableSetStmt" and (why := primary_setting(fields)):
        return write(why)
    words = {"VariableSetStmt": "SET", "VariableShowStmt": "SHOW", "DiscardStmt": "DISCARD"}
    reason = words.get(kind, "DEALLOCATE")
    if kind == "VariableSetStmt" and str(fields.get("kind", "")).startswith("VAR_RESET"):
        reason = "RESET"
    return ReadShape(SESSION, reason)


def primary_setting(fields: Node) -> str | None:
    """Why a SET must go to the primary: SET TRANSACTION READ WRITE or SERIALIZABLE (now or as the
    session's default; a hot standby refuses both), or a setting that makes the server read text
    unlike pgwarden's parser (standard_conforming_strings off, a client-only encoding)."""
    name = str(fields.get("name") or "")
    values = [constant_text(a) for a in fields.get("args") or []]
    ok = TEXT_SETTINGS.get(name.lower())
    if name in TRANSACTION_SETS:
        read_only, serializable = characteristics(fields.get("args") or [])
        return f"SET {name} READ WRITE or SERIALIZABLE" if read_only is False or serializable else None
    if name.lower() in ("transaction_isolation", "default_transaction_isolation") and "serializable" in values:
        return f"SET {name.lower()} to serializable"
    if ok is not None and values and not all(v is not None and ok(v) for v in values):
        return f"SET {name.lower()} changes how the server reads statement text"
    return None


__all__ = ["READ", "SESSION", "WRITE", "ReadShape", "read_shape"]
