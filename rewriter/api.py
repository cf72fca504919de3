"""The rewriter's entry point: rewrite(sql, ctx) -> Allow | Rewrite | Deny, failing closed."""

from __future__ import annotations

from collections import Counter

from .channels import notify_rewrite, refuse_notify
from .checks import (
    PASS_THROUGH,
    QUERIES,
    WRAPPED,
    Checked,
    Judged,
    Rule,
    check_calls,
    check_copy_ends,
    check_copy_from,
    check_ref,
    check_setting,
)
from .classify import INNER_QUERY, statement_kind, statements, walk_statement
from .complexity import too_complex
from .context import Context
from .copy import copy_to_query
from .implicit import check_columns, check_implicit_names
from .inserts import guard_inserts
from .pgparser import Node, parser
from .reads import requalify_columns, substitute_reads
from .refuse import Refused
from .result import Allow, Deny, Result, Rewrite
from .routines import check_routines
from .secret_settings import check_setting_reads, check_settings_view, check_show
from .server_grammar import server_text
from .side_channels import check_explain
from .splice import Edit, ParamCheck, Tokens, apply, scan
from .verify import verify
from .write_masks import mask_write_columns
from .writes import guard_conflicts, guard_updates, qualify_targets

# The rewrites, in order; each maps a checked statement to text edits and parameter checks.
RULES: tuple[Rule, ...] = (
    substitute_reads,
    requalify_columns,
    qualify_targets,
    guard_updates,
    guard_inserts,
    guard_conflicts,
    mask_write_columns,
    copy_to_query,
)


def check_statement(kind: str, fields: Node, ctx: Context) -> Checked:
    """Classify one statement and apply every policy check to it (Refused when any fails)."""
    if kind == "TransactionStmt" and statement_kind(kind, fields) == "two_phase":
        raise Refused(
            "PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are refused for "
            "non-bypass roles: a prepared transaction's gid is shared by every session "
            "(and tenant) of the server",
            "Use plain COMMIT; leave two-phase commit to a bypass role (a transaction manager).",
            "statements",
        )
    refuse_notify(kind)
    if kind in PASS_THROUGH:
        check_setting(kind, fields)
        check_show(kind, fields)
        found = walk_statement(kind, fields)
        if found.refs or found.functions or found.problems:
            raise Refused(
                f"{statement_kind(kind, fields)} statement refused: it unexpectedly names relations or calls",
                "Send such expressions in a SELECT.",
                "statements",
            )
        return Checked(kind, fields)
    inner = fields.get(INNER_QUERY.get(kind, ""))
    if kind in WRAPPED and inner is not None and next(iter(inner)) not in WRAPPED[kind]:
        raise Refused(
            f"{statement_kind(kind, fields)} of {next(iter(inner))} is refused",
            "Only bypass roles may run DDL.",
            "statements",
        )
    if kind not in QUERIES and kind not in WRAPPED and kind not in ("CallStmt", "ExecuteStmt"):
        what = statement_kind(kind, fields)
        raise Refused(
            f"{what} statements ({kind}) are refused for non-bypass roles",
            "DDL, TRUNCATE, GRANT, DO and other administration are for bypass roles only.",
            "statements",
        )
    if kind == "CopyStmt":
        check_copy_ends(fields)
    found = walk_statement(kind, fields)
    check_implicit_names(found, ctx)
    check_calls(found, ctx)
    check_setting_reads(found.setting_reads)
    refs = tuple(check_ref(ref, ctx) for ref in found.refs)
    check_routines(found, ctx, any(r.protected for r in refs))
    check_columns(found, refs, ctx)
    check_settings_view(kind, fields, refs)
    check_copy_from(refs)
    check_explain(kind, fields)
    return Checked(kind, fields, found, refs)


def changes_name_resolution(kind: str, fields: Node) -> bool:
    """SET/RESET search_path or DISCARD ALL: later statements would resolve names differently."""
    if kind == "VariableSetStmt":
        return (fields.get("name") or "").lower() == "search_path"
    return kind == "DiscardStmt" and fields.get("target") == "DISCARD_ALL"


def check_message(checked: list[Checked]) -> None:
    """Refuse a message that changes search_path and, in the same breath, names relations or calls.

    pgwarden resolves every statement of a message with the search_path the session had
    before it; the router follows a SET search_path only once its message has run.
    """
    if (
        len(checked) > 1
        and any(changes_name_resolution(c.kind, c.fields) for c in checked)
        and any(c.found.refs or c.found.functions for c in checked)
    ):
        raise Refused(
            "a message that changes search_path and also uses tables or functions is refused",
            "Send SET search_path (or DISCARD ALL) in a message of its own.",
            "statements",
        )


def judge(checked: Checked, ctx: Context, toks: Tokens) -> Judged:
    """Run the rules over a checked statement."""
    out = [item for rule in RULES for item in rule(checked, ctx, toks)]
    checks = tuple(i for i in out if isinstance(i, ParamCheck))
    if checks and checked.kind == "PrepareStmt":
        raise Refused(
            "PREPARE of an INSERT whose tenant value is a parameter is refused",
            "Use the extended protocol (Parse/Bind), or give the tenant as a literal.",
            "tenancy.column",
        )
    if checks:
        uses = Counter(checked.found.params)
        reused = next((c.number for c in checks if uses[c.number] > 1), None)
        if reused is not None:  # (`$1::"char"` elsewhere made PostgreSQL read 'acme' as 'a': found 2026-12-06)
            raise Refused(
                f"parameter ${reused} sets the tenant column and is used elsewhere in the statement: "
                "PostgreSQL may take its type from that other use and read the value otherwise than "
                "pgwarden checks it",
                "Pass the tenant value as a parameter of its own, used once (or leave the tenant column out).",
                "tenancy.column",
            )
    return Judged(checked, tuple(i for i in out if isinstance(i, Edit)), checks)


def needs_rules(checked: Checked) -> bool:
    """True when some reference is protected (only then are the client's tokens needed)."""
    return any(r.protected for r in checked.refs)


def summary(judged: list[Judged]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The protected tables touched and the "schema.table.column" masks applied."""
    refs = [r for j in judged for r in j.checked.refs if r.protected]
    tables = tuple(dict.fromkeys(r.name for r in refs))
    masked = tuple(dict.fromkeys(f"{r.name}.{col}" for r in refs for col in r.governing.masks))
    return tables, masked


def rewrite(sql: str, ctx: Context) -> Result:
    """What to send the backend for a client's message, for a non-bypass session.

    The message is judged, rewritten and sent as the backend's grammar reads it
    (server_grammar.server_text: on an older backend, words it reads as names are quoted).

    >>> rewrite("SAVEPOINT s1", Context({}, {}, None))
    Allow(sql='SAVEPOINT s1')
    >>> rewrite("TRUNCATE orders", Context({}, {}, None)).rule
    'statements'
    """
    try:
        sql, client = server_text(sql, ctx.server_major), sql
        parsed = statements(sql)
    except Refused as refused:
        return refused.deny
    except (parser.ParseError, ValueError) as exc:
        return Deny(
            f"statement refused: it could not be parsed ({exc})",
            "Check the SQL syntax (PostgreSQL's own parser rejected it).",
            "parse",
        )
    if len(parsed) == 1 and (scoped := notify_rewrite(*parsed[0], ctx.tenant)) is not None:
        return scoped  # NOTIFY and pg_notify() go to the tenant's channel (rewriter/channels.py)
    try:
        checked = [check_statement(kind, fields, ctx) for kind, fields in parsed]
        check_message(checked)
        if not any(needs_rules(c) for c in checked):
            return Allow(sql) if sql == client else Rewrite(sql)
        toks = scan(sql)
        judged = [judge(c, ctx, toks) for c in checked]
        edits = [e for j in judged for e in j.edits]
        new = apply(sql.encode(), edits).decode()
        verify(sql, new, ctx, judged)
    except Refused as refused:
        return refused.deny
    except RecursionError:  # a walk deeper than Python allows, though within the bounds checked at parse
        return too_complex("nested too deeply for its rewrite to be checked").deny
    except Exception as exc:
        return Deny(
            f"statement refused: pgwarden could not rewrite it safely ({type(exc).__name__}: {exc})",
            "Simplify the statement, or report it to the pgwarden maintainers.",
            "rewrite",
        )
    tables, masked = summary(judged)
    checks = tuple(dict.fromkeys((c.number, c.value) for j in judged for c in j.checks))
    return Rewrite(new, tables, masked, checks)
