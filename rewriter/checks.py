"""Fail-closed checks of one statement: its kind, settings, relations, functions and operators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .analyse import Found, RelRef
from .context import Context, TableRule
from .pgparser import Node
from .refuse import Refused
from .resolve import (
    CROSS_TENANT_FUNCTIONS,
    PER_BACKEND_FUNCTIONS,
    function_allowed,
    resolve_relation,
    table_rule,
)
from .splice import Edit, ParamCheck, Tokens
from .statistics import statistics_function

# Statements that touch no table data: forwarded as written once classified.
PASS_THROUGH = frozenset(
    {
        "TransactionStmt",
        "FetchStmt",
        "ClosePortalStmt",
        "ListenStmt",
        "UnlistenStmt",
        "NotifyStmt",
        "DiscardStmt",
        "DeallocateStmt",
        "ConstraintsSetStmt",
        "VariableShowStmt",
        "VariableSetStmt",
    }
)
QUERIES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
# Wrapping statements and the inner statement kinds each may hold.
WRAPPED = {
    "ExplainStmt": QUERIES | {"ExecuteStmt"},
    "DeclareCursorStmt": frozenset({"SelectStmt"}),
    "PrepareStmt": QUERIES,
    "CopyStmt": QUERIES,
}
DENIED_SETTINGS = frozenset(
    {
        "role",
        "session_authorization",
        "session_replication_role",
        "allow_system_table_mods",
        "ignore_system_indexes",
        "zero_damaged_pages",
        "ignore_checksum_failure",
        "ignore_invalid_pages",
        "dynamic_library_path",
        "session_preload_libraries",
        "local_preload_libraries",
        "jit_provider",
        "lc_messages",
        "allow_in_place_tablespaces",
        "compute_query_id",
        "lo_compat_privileges",
        "backslash_quote",
    }
)
# auto_explain.*: with log_analyze and log_level = notice it sends EXPLAIN ANALYZE of every statement to the client.
DENIED_SETTING_PREFIXES = ("log_", "debug_", "trace_", "track_", "wal_", "pgwarden.", "auto_explain.")
# Settings that change how the backend reads the client's text: a value other than
# these would let PostgreSQL read a statement differently from pgwarden's parser.
# (Client-only encodings such as SJIS or BIG5 can hide a quote or backslash in a
# multibyte character; `standard_conforming_strings = off` makes `\'` escape a quote.)
TEXT_SETTINGS: dict[str, Callable[[str], bool]] = {
    "standard_conforming_strings": lambda v: v in ("on", "true", "yes", "1", "t"),
    "client_encoding": lambda v: v.replace("-", "").replace("_", "") not in CLIENT_ONLY_ENCODINGS,
}
CLIENT_ONLY_ENCODINGS: frozenset[str] = frozenset(
    {
        "sjis",
        "shiftjis",
        "shiftjis2004",
        "big5",
        "gbk",
        "gb18030",
        "uhc",
        "johab",
        "win932",
        "win936",
        "win949",
        "win950",
        "cp932",
        "cp936",
        "cp949",
        "cp950",
        "mskanji",
        "tcvn",
        "tcvn5712",
        "windows932",
        "windows936",
        "windows949",
        "windows950",
        "sjis2004",
    }
)
ROLE_ACTION = {
    "select": "select",
    "insert": "insert",
    "update": "update",
    "delete": "delete",
    "copy_to": "select",
    "copy_from": "insert",
}


@dataclass(frozen=True, slots=True)
class Resolved:
    """A relation reference with the name PostgreSQL would read and the rule that governs it."""

    ref: RelRef
    name: str
    rule: TableRule | None

    @property
    def protected(self) -> bool:
        return self.rule is not None and self.rule.protected

    @property
    def governing(self) -> TableRule:
        """`rule`, for a reference the caller knows is protected or tenant-scoped."""
        assert self.rule is not None, self.name
        return self.rule

    @property
    def tenant_column(self) -> str:
        """The rule's tenant column, for a reference the caller knows is tenant-scoped."""
        column = self.governing.tenant_column
        assert column is not None, self.name
        return column


@dataclass
class Checked:
    """A statement that passed every check: what edits are built from."""

    kind: str
    fields: Node
    found: Found = field(default_factory=Found)
    refs: tuple[Resolved, ...] = ()


@dataclass(frozen=True, slots=True)
class Judged:
    """One checked statement with the edits and parameter checks the rules made for it."""

    checked: Checked
    edits: tuple[Edit, ...] = ()
    checks: tuple[ParamCheck, ...] = ()


Rule = Callable[[Checked, Context, Tokens], list[Edit | ParamCheck]]
"""A rewrite (api.RULES): a checked statement, the session, the client's tokens -> edits and parameter checks."""


def check_setting(kind: str, fields: Node) -> None:
    """Refuse RESET ALL, SET ROLE / SESSION AUTHORIZATION and settings that administer the server.

    >>> check_setting("VariableSetStmt", {"kind": "VAR_SET_VALUE", "name": "TimeZone"})
    """
    if kind != "VariableSetStmt":
        return
    if fields.get("kind") == "VAR_RESET_ALL":
        raise Refused(
            "RESET ALL is refused: it would also reset settings pgwarden relies on",
            "Reset the settings you changed one by one.",
            "statements",
        )
    args = fields.get("args") or []
    value = constant_text(args[0]) if fields.get("kind") == "VAR_SET_VALUE" and len(args) == 1 else ""
    check_setting_name((fields.get("name") or "").lower(), value)


def constant_text(node: object) -> str | None:
    """The text of a literal (string, number or boolean), lower-cased; None for anything else."""
    const = (node or {}).get("A_Const") if isinstance(node, dict) else None
    if not const:
        return None
    for key in ("sval", "ival", "fval", "boolval"):
        if key in const:
            value = const[key]
            return str(next(iter(value.values()), 0) if isinstance(value, dict) else value).lower()
    return None


def check_setting_name(name: str, value: str | None) -> None:
    """Refuse changing a setting that is pgwarden's, the role's, the server's, or how text is read.

    `value` is the new value's text ("" for DEFAULT/RESET, None when not a literal).
    """
    if name in TEXT_SETTINGS and value != "" and (value is None or not TEXT_SETTINGS[name](value)):
        shown = "a value that is not a literal" if value is None else repr(value)
        raise Refused(
            f"setting {name} to {shown} is refused: PostgreSQL would then read statements differently from pgwarden",
            f"Keep {name} at its default (UTF8 / on).",
            "statements",
        )
    if name.startswith("pgwarden."):
        raise Refused(
            f"SET {name} reached the rewriter: pgwarden answers it itself",
            "Set the tenant as policies' tenancy.sources describe.",
            "tenancy.sources",
        )
    if name in DENIED_SETTINGS or name.startswith(DENIED_SETTING_PREFIXES):
        raise Refused(
            f"changing setting {name} is refused for non-bypass roles",
            "Only bypass roles may change role, authorization or server settings.",
            "statements",
        )


def check_ref(ref: RelRef, ctx: Context) -> Resolved:
    """Resolve one reference and apply the policy to it (Refused when not allowed)."""
    name = resolve_relation(ref.rv.get("schemaname"), ref.rv["relname"], ctx)
    if ref.role == "merge":
        for action in ("insert", "update", "delete"):
            rule = table_rule(name, action, ctx)
        if rule is not None and rule.protected:
            raise Refused(
                f'MERGE into "{name}" is refused: it is tenant-scoped or masked',
                "Use INSERT ... ON CONFLICT, UPDATE or DELETE instead.",
                f"tables.{name}",
            )
        return Resolved(ref, name, rule)
    rule = table_rule(name, ROLE_ACTION[ref.role], ctx)
    if ref.locked:  # FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE: PostgreSQL asks for UPDATE privilege
        check_lock(name, ctx)
    if ref.owner is not None and (ref.owner.get("onConflictClause") or {}).get("action") == "ONCONFLICT_UPDATE":
        table_rule(name, "update", ctx)
    if reads_target(ref):
        table_rule(name, "select", ctx)
    return Resolved(ref, name, rule)


def check_lock(name: str, ctx: Context) -> None:
    """A row-locking clause on `name` needs the update grant, as PostgreSQL's own privilege check would."""
    try:
        table_rule(name, "update", ctx)
    except Refused as refused:
        raise Refused(
            f'locking rows of "{name}" (FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE) is refused: '
            f"it needs the update grant, and {refused}",
            f"Drop the locking clause, lock only tables you may update (FOR UPDATE OF t), "
            f"or grant update on {name} to your role.",
            refused.deny.rule,
        ) from None


def reads_target(ref: RelRef) -> bool:
    """True when a write also reads its target's rows (WHERE, FROM/USING, RETURNING, ON CONFLICT):
    as in PostgreSQL, that needs the select grant too."""
    owner = ref.owner or {}
    if ref.role in ("update", "delete"):
        return any(owner.get(k) for k in ("whereClause", "fromClause", "usingClause", "returningClause"))
    return ref.role == "insert" and (
        bool(owner.get("returningClause")) or (owner.get("onConflictClause") or {}).get("action") == "ONCONFLICT_UPDATE"
    )


def check_calls(found: Found, ctx: Context) -> None:
    """Refuse calls of functions not known to be safe and schema-qualified operators.

    set_config() is allowed for the settings SET may change, named by a literal.
    """
    for args in found.settings:
        name = constant_text(args[0]) if args else None
        if name is None:
            raise Refused(
                "set_config() with a computed setting name is refused",
                "Name the setting as a string literal, or use SET.",
                "functions.allow",
            )
        if name == "search_path":
            raise Refused(
                "set_config('search_path', ...) is refused: pgwarden resolves names by the search_path it tracks",
                "Use SET search_path, which pgwarden follows.",
                "functions.allow",
            )
        check_setting_name(name, constant_text(args[1]) if len(args) > 1 else None)
    for parts in found.functions:
        if parts[-1] == "set_config" and parts[:-1] in ((), ("pg_catalog",)):
            continue
        if parts[-1] in PER_BACKEND_FUNCTIONS and parts[:-1] in ((), ("pg_catalog",)):
            raise Refused(
                f"function {parts[-1]}() is refused: it reads what the backend holds for "
                "its session, which on a pooled backend can be another client's",
                "Use INSERT ... RETURNING, or keep the value nextval() returned."
                if parts[-1] in ("lastval", "currval")
                else "Only bypass roles may read it.",
                "catalogs",
            )
        if parts[-1] in CROSS_TENANT_FUNCTIONS and parts[:-1] in ((), ("pg_catalog",)):
            why, hint = CROSS_TENANT_FUNCTIONS[parts[-1]]
            raise Refused(f"function {parts[-1]}() is refused: {why}", hint, "functions.allow")
        if not function_allowed(parts, ctx):
            shown = ".".join(parts)
            if statistics_function(parts[-1]) and parts[:-1] in ((), ("pg_catalog",)):
                raise Refused(
                    f"function {shown}() is refused: it reports statistics or sizes that count every tenant's rows",
                    "Only bypass roles may read statistics; use count(*) over your own rows instead.",
                    "functions.allow",
                )
            raise Refused(
                f"function {shown}() is refused: it is not a safe built-in nor listed in functions.allow",
                f"Ask for {shown} to be added to functions.allow, or avoid it.",
                "functions.allow",
            )
    for op in found.operators:
        if op[0] != "pg_catalog":
            raise Refused(
                f"operator {'.'.join(op)} is refused: only pg_catalog operators may be named",
                "Use the built-in operator.",
                "functions.allow",
            )
    if found.problems:
        raise Refused(
            f"statement refused: it contains {found.problems[0]}",
            "Only bypass roles may run DDL or this construct.",
            "statements",
        )


def check_copy_ends(fields: Node) -> None:
    """COPY only to or from the client, never a server file or program."""
    if fields.get("filename") or fields.get("is_program"):
        raise Refused(
            "COPY to or from a server file or program is refused", "Use COPY ... TO STDOUT / FROM STDIN.", "statements"
        )


def check_copy_from(refs: tuple[Resolved, ...]) -> None:
    """Never COPY FROM into a tenant-scoped table: its rows cannot be checked."""
    for r in refs:
        if r.ref.role == "copy_from" and r.rule is not None and r.rule.tenant_column:
            raise Refused(
                f'COPY FROM into tenant-scoped table "{r.name}" is refused: its rows cannot be checked',
                "Use INSERT (pgwarden sets the tenant column), or a bypass role for bulk loads.",
                f"tables.{r.name}",
            )
