"""The session of the rewrites by example in docs/architecture.md (tenant acme, ssn redacted), for docstring examples."""

from __future__ import annotations

from .checks import Rule
from .classify import statements
from .context import Column, Context, MaskSpec, TableRule
from .splice import Edit, ParamCheck, apply, scan

_ALL = frozenset({"select", "insert", "update", "delete"})
EXAMPLE = Context(
    tables={
        "public.customers": TableRule("public.customers", "tenant_id", _ALL, {"ssn": MaskSpec("redact")}),
        "public.orders": TableRule("public.orders", "tenant_id", _ALL),
    },
    schema={
        "public.customers": (Column("id", "integer"), Column("tenant_id", "text"), Column("ssn", "text")),
        "public.orders": (Column("id", "integer"), Column("tenant_id", "text"), Column("total", "numeric")),
    },
    tenant="acme",
)


def run_rule(rule: Rule, sql: str, ctx: Context = EXAMPLE) -> str:
    """`sql` with only `rule`'s edits applied, followed by its parameter checks if any."""
    from .api import check_statement

    toks = scan(sql)
    out = [item for kind, fields in statements(sql) for item in rule(check_statement(kind, fields, ctx), ctx, toks)]
    text = apply(sql.encode(), [e for e in out if isinstance(e, Edit)]).decode()
    checks = [(c.number, c.value) for c in out if isinstance(c, ParamCheck)]
    return text + (f"  -- checks {checks}" if checks else "")
