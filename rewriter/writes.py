"""Write rules: tenant predicates for UPDATE/DELETE/ON CONFLICT, tenant values for INSERT."""

from __future__ import annotations

from .analyse import node_type
from .checks import Checked, Resolved
from .context import Context
from .leakproof import first_leak
from .masks import quote_qualified, tenant_predicate
from .pgparser import Node
from .refuse import Refused
from .splice import Edit, ParamCheck, Tokens, clause_end, name_end


def tenant_targets(c: Checked, role: str) -> list[Resolved]:
    """Write targets of `role` that are tenant-scoped."""
    return [r for r in c.refs if r.ref.role == role and r.rule is not None and r.rule.tenant_column]


def qualify(toks: Tokens, r: Resolved) -> Edit:
    """The target's name, schema-qualified and quoted (ONLY and the alias stay as written)."""
    i = toks.at(r.ref.rv["location"])
    return Edit(toks.starts[i], toks.ends[name_end(toks, i) - 1], quote_qualified(r.name))


def qualify_targets(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """Name each protected write target schema-qualified and quoted, so search_path cannot redirect it.

    >>> from .examples import run_rule
    >>> print(run_rule(qualify_targets, "UPDATE orders o SET total = 0"))
    UPDATE "public"."orders" o SET total = 0
    """
    return [qualify(toks, r) for r in c.refs if r.ref.role in ("insert", "update", "delete") and r.protected]


def where_edits(toks: Tokens, i: int, predicate: str, guard: bool = False) -> list[Edit]:
    """Put `predicate` first in the WHERE clause found at depth 0 from token `i` (or add one).

    With `guard` the client's condition runs only on rows that passed the predicate:
    `WHERE p AND CASE WHEN p THEN (cond) END` (PostgreSQL orders a scan's conditions by
    cost, but never evaluates a CASE branch whose WHEN is false; see leakproof.py).
    >>> from .splice import scan, apply
    >>> t = scan("UPDATE t SET a = 1 WHERE a OR b RETURNING a")
    >>> apply(b"UPDATE t SET a = 1 WHERE a OR b RETURNING a", where_edits(t, 1, "p")).decode()
    'UPDATE t SET a = 1 WHERE p AND (a OR b) RETURNING a'
    >>> apply(b"UPDATE t SET a = 1 WHERE a OR b RETURNING a", where_edits(t, 1, "p", True)).decode()
    'UPDATE t SET a = 1 WHERE p AND CASE WHEN p THEN (a OR b) END RETURNING a'
    """
    w = clause_end(toks, i, frozenset({"WHERE", "RETURNING"}))
    if w < len(toks.names) and toks.names[w] == "WHERE":
        if toks.names[w + 1] == "CURRENT_P":
            raise Refused(
                "WHERE CURRENT OF on a tenant-scoped table is refused",
                "Update by key instead of by cursor position.",
                "tables",
            )
        end = clause_end(toks, w + 1, frozenset({"RETURNING"}))
        opening = f"{predicate} AND CASE WHEN {predicate} THEN (" if guard else f"{predicate} AND ("
        return [
            Edit(toks.starts[w + 1], toks.starts[w + 1], opening),
            Edit(toks.ends[end - 1], toks.ends[end - 1], ") END" if guard else ")"),
        ]
    return [Edit(toks.ends[w - 1], toks.ends[w - 1], f" WHERE {predicate}")]


def tenant_value(expr: Node, column: str, tenant: str) -> list[ParamCheck]:
    """Accept a value for the tenant column only if it is the session's tenant or a parameter.

    >>> tenant_value({"ParamRef": {"number": 2}}, "tid", "acme")
    [ParamCheck(number=2, value='acme')]
    """
    typed = node_type(expr)
    if typed and typed[0] == "TypeCast":  # a cast can change the value: 'acme'::varchar(2) is 'ac'
        raise Refused(
            f"a cast around the value of {column} is refused: it could change the value written",
            f"Send {column} as a plain literal or parameter, without a cast.",
            "tenancy.column",
        )
    if typed and typed[0] == "ParamRef":
        return [ParamCheck(typed[1]["number"], tenant)]
    if typed and typed[0] == "A_Const":
        value = next((v for k, v in typed[1].items() if k in ("sval", "ival", "fval")), None)
        inner = next(iter(value.values()), 0) if isinstance(value, dict) else None
        if value is not None and str(inner) == tenant:
            return []
    raise Refused(
        f"setting {column} to anything but the session's tenant is refused",
        f"Leave {column} out (pgwarden fills it in) or pass the session's tenant.",
        "tenancy.column",
    )


def assignment_checks(targets: list[Node], r: Resolved, tenant: str, allow_excluded: bool) -> list[ParamCheck]:
    """Checks for SET lists that assign the tenant column (UPDATE, ON CONFLICT DO UPDATE)."""
    column, checks = r.tenant_column, []
    for t in targets:
        res = t["ResTarget"]
        if res.get("name") != column:
            continue
        val = res.get("val") or {}
        if "MultiAssignRef" in val or res.get("indirection"):
            raise Refused(
                f"assigning {column} in a multi-column SET is refused",
                f"Assign {column} on its own, or leave it out.",
                "tenancy.column",
            )
        fields = (val.get("ColumnRef") or {}).get("fields", [])
        if allow_excluded and [f.get("String", {}).get("sval") for f in fields] == ["excluded", column]:
            continue
        checks += tenant_value(val, column, tenant)
    return checks


def guard_updates(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """UPDATE/DELETE of a tenant-scoped table: AND the tenant predicate into its WHERE.

    >>> from .examples import run_rule
    >>> print(run_rule(guard_updates, "UPDATE orders SET total = 0 WHERE id = 1 OR true"))
    UPDATE orders SET total = 0 WHERE "orders"."tenant_id" = 'acme' AND (id = 1 OR true)
    >>> print(run_rule(guard_updates, "DELETE FROM orders o RETURNING o.id"))
    DELETE FROM orders o WHERE "o"."tenant_id" = 'acme' RETURNING o.id
    """
    out: list[Edit | ParamCheck] = []
    guard = first_leak(c.kind, c.fields) is not None
    for r in tenant_targets(c, "update") + tenant_targets(c, "delete"):
        if r.ref.role == "update":
            out += assignment_checks(r.ref.statement.get("targetList", []), r, ctx.session_tenant, False)
        i = toks.at(r.ref.rv["location"])
        out += where_edits(
            toks, name_end(toks, i), tenant_predicate(r.ref.ref_name, r.tenant_column, ctx.session_tenant), guard
        )
    return out


def guard_conflicts(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """ON CONFLICT DO UPDATE of a tenant-scoped table gets the tenant predicate in its WHERE.

    >>> from .examples import run_rule
    >>> print(run_rule(guard_conflicts, "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 0"))
    INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 0 WHERE "orders"."tenant_id" = 'acme'
    """
    out: list[Edit | ParamCheck] = []
    guard = first_leak(c.kind, c.fields) is not None
    for r in tenant_targets(c, "insert"):
        clause = r.ref.statement.get("onConflictClause") or {}
        if clause.get("action") != "ONCONFLICT_UPDATE":
            continue
        out += assignment_checks(clause.get("targetList", []), r, ctx.session_tenant, True)
        conflict = clause_end(toks, toks.at(r.ref.rv["location"]), frozenset({"CONFLICT"}))
        do = clause_end(toks, conflict + 1, frozenset({"DO"}))
        if do >= len(toks.names) or toks.names[do + 1] != "UPDATE":
            raise Refused(
                "could not place the tenant predicate in ON CONFLICT DO UPDATE", "Simplify the statement.", "tables"
            )
        out += where_edits(toks, do + 2, tenant_predicate(r.ref.ref_name, r.tenant_column, ctx.session_tenant), guard)
    return out
