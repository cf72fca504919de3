"""Read rules: every protected relation a statement reads becomes its protected projection."""

from __future__ import annotations

from .checks import Checked, Resolved
from .context import Context
from .leakproof import first_leak
from .masks import projection, quote_ident
from .refuse import Refused
from .splice import Edit, ParamCheck, Tokens, relation_span
from .write_masks import fields_of


def substituted(r: Resolved, ctx: Context, fence: bool = False) -> str:
    """The text that replaces a protected relation name: P(t), aliased as the client named it.

    >>> from .analyse import RelRef
    >>> from .context import Column, TableRule
    >>> rule = TableRule("public.t", "tid", frozenset({"select"}))
    >>> ctx = Context({"public.t": rule}, {"public.t": (Column("tid", "text"),)}, "a")
    >>> substituted(Resolved(RelRef({"relname": "t", "inh": True}, "select"), "public.t", rule), ctx)
    '(SELECT "tid" FROM "public"."t" WHERE "tid" = \\'a\\') AS "t"'
    """
    text = projection(r.governing, ctx.schema[r.name], ctx.tenant, only=not r.ref.rv.get("inh"), fence=fence)
    return text if r.ref.rv.get("alias") else f"{text} AS {quote_ident(r.ref.rv['relname'])}"


def substitute_reads(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """Replace each protected relation read by P(t), keeping the client's alias; fenced
    (`OFFSET 0`) when a condition of the statement is not provably leak-free.

    `ONLY orders` -> `(... FROM ONLY ...) AS "orders"`; `TABLE orders` -> `SELECT * FROM (...) AS "orders"`.
    >>> from .examples import run_rule
    >>> print(run_rule(substitute_reads, "SELECT o.total FROM orders o WHERE o.id = $1"))
    SELECT o.total FROM (SELECT "id", "tenant_id", "total" FROM "public"."orders" WHERE "tenant_id" = 'acme') o WHERE o.id = $1
    >>> print(run_rule(substitute_reads, "SELECT * FROM customers WHERE ssn = '1'"))
    SELECT * FROM (SELECT "id", "tenant_id", CAST('****' AS text) AS "ssn" FROM "public"."customers" WHERE "tenant_id" = 'acme') AS "customers" WHERE ssn = '1'
    >>> print(run_rule(substitute_reads, "SELECT id FROM orders WHERE total::int > 0"))
    SELECT id FROM (SELECT "id", "tenant_id", "total" FROM "public"."orders" WHERE "tenant_id" = 'acme' OFFSET 0) AS "orders" WHERE total::int > 0
    """
    edits: list[Edit | ParamCheck] = []
    fence = first_leak(c.kind, c.fields) is not None
    for r in c.refs:
        if r.ref.role != "select" or not r.protected:
            continue
        if r.ref.sampled:
            raise Refused(
                f'TABLESAMPLE on protected table "{r.name}" is refused',
                "Sample with a WHERE clause (e.g. random() < 0.1) instead.",
                f"tables.{r.name}",
            )
        start, end = relation_span(toks, r.ref.rv)
        i = toks.at(start)
        if i > 0 and toks.names[i - 1] == "TABLE":  # `TABLE t` is `SELECT * FROM t`
            edits.append(Edit(toks.starts[i - 1], end, f"SELECT * FROM {substituted(r, ctx, fence)}"))
        else:
            edits.append(Edit(start, end, substituted(r, ctx, fence)))
    return edits


def requalify_columns(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """`public.orders.id` names a table that is now a projection aliased "orders": shorten it.

    Only when nothing else in the statement is named like the table (so the reference
    cannot come to mean another item).
    >>> from .examples import run_rule
    >>> print(run_rule(requalify_columns, "SELECT public.orders.id FROM public.orders"))
    SELECT "orders".id FROM public.orders
    """
    substituted = {r.name for r in c.refs if r.ref.role == "select" and r.protected and not r.ref.rv.get("alias")}
    edits: list[Edit | ParamCheck] = []
    for ref in c.found.qualified_columns:
        parts = fields_of(ref)
        name = ".".join(parts[:2])
        if len(parts) != 3 or name not in substituted:
            continue
        rel = parts[1]
        if rel in c.found.aliases or any(r.ref.ref_name == rel and r.name != name for r in c.refs):
            raise Refused(
                f"the column reference {'.'.join(parts)} is ambiguous once {name} is protected",
                f"Give {name} an alias and qualify the column with it.",
                f"tables.{name}",
            )
        i = toks.at(ref["location"])
        edits.append(Edit(toks.starts[i], toks.ends[i + 2], quote_ident(rel), "requalify"))
    return edits
