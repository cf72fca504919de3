"""Refuse statements that make PostgreSQL call a function they do not name, which functions.allow
does not list: casts, type input/output, domain checks, operator classes, through types and columns."""

from __future__ import annotations

from .analyse import Found
from .catalog import Risk
from .checks import Resolved
from .context import Context
from .refuse import Refused
from .resolve import search_order
from .routines import live_column_names

# Built-ins that run the input or receive functions of the type whose OID (or name) they are given.
TYPE_IO_FUNCTIONS = frozenset(
    {
        "record_in",
        "record_recv",
        "array_in",
        "array_recv",
        "range_in",
        "range_recv",
        "multirange_in",
        "multirange_recv",
        "domain_in",
        "domain_recv",
        "pg_input_is_valid",
        "pg_input_error_info",
    }
)


def resolve_type(parts: tuple[str, ...], ctx: Context) -> str | None:
    """The "schema.name" PostgreSQL would take a type name for (None: no type the schema read knows).

    >>> from .catalog import ImplicitRisks
    >>> ctx = Context({}, {}, None, search_path=("app", "public"), implicit=ImplicitRisks(
    ...     known_types=frozenset({"pg_catalog.text", "public.tref", "app.tref"})))
    >>> resolve_type(("tref",), ctx), resolve_type(("text",), ctx), resolve_type(("public", "tref"), ctx)
    ('app.tref', 'pg_catalog.text', 'public.tref')
    """
    if len(parts) >= 2:
        return ".".join(parts[-2:])
    if not parts:
        return None
    for schema in search_order(ctx.search_path):
        if f"{schema}.{parts[0]}" in ctx.implicit.known_types:
            return f"{schema}.{parts[0]}"
    return None


def _refuse(what: str, risk: Risk) -> None:
    raise Refused(
        f"{what} is refused: {risk.why}",
        f"Review {', '.join(risk.functions)} and, if they are safe for every tenant, add them to "
        "functions.allow; otherwise avoid it.",
        "functions.allow",
    )


def check_type(parts: tuple[str, ...], ctx: Context, how: str = "type") -> None:
    """Refuse a type named in a cast, a typed literal, a column definition or a function-style cast."""
    name = resolve_type(parts, ctx)
    if name is None:
        return
    if (risk := ctx.implicit.types.get(name)) is not None:
        _refuse(f"{how} {name}", risk)
    if (risk := ctx.implicit.cast_targets.get(name)) is not None:
        _refuse(f"a cast to {name}", risk)


def check_named_calls(found: Found, ctx: Context) -> None:
    """Function-style casts (`tref('x')`, `('x'::text).tref`), built-ins that run a type's input
    function by its OID, and allowed functions and operators whose argument or result types are unsafe."""
    risks = ctx.implicit
    for parts in found.functions:
        check_type(parts, ctx, "a function-style cast to type")
        if parts[-1] in TYPE_IO_FUNCTIONS and parts[:-1] in ((), ("pg_catalog",)):
            raise Refused(
                f"function {parts[-1]}() is refused: it runs the input or receive function of any "
                "type it is given, which pgwarden cannot check",
                "Cast the value instead (CAST(x AS type)).",
                "functions.allow",
            )
        candidates = [".".join(parts)] if len(parts) > 1 else [f"{s}.{parts[0]}" for s in search_order(ctx.search_path)]
        for fn in candidates:
            if (risk := risks.functions.get(fn)) is not None:
                _refuse(f"function {fn}()", risk)
    unsafe = risks.types.keys() | risks.cast_targets.keys()
    fields = [n for n in dict.fromkeys(found.field_names) if resolve_type((n,), ctx) in unsafe]
    columns = live_column_names(ctx) if fields else frozenset()
    for name in fields:
        if name not in columns:  # (x).name is a column, else a call or a cast
            check_type((name,), ctx, "a field-notation cast to type")
    check_operators(found, ctx)


def check_operators(found: Found, ctx: Context) -> None:
    """Operators whose allowed function takes or returns an unsafe type."""
    risks = ctx.implicit
    for symbol in dict.fromkeys(found.bare_operators):
        for schema in search_order(ctx.search_path):
            for fn in sorted(ctx.routines.operators.get(f"{schema}.{symbol}", ())):
                if (risk := risks.functions.get(fn)) is not None:
                    _refuse(f"operator {symbol} (function {fn})", risk)


def check_columns(found: Found, refs: tuple[Resolved, ...], ctx: Context) -> None:
    """Refuse reading or writing a column whose type is unsafe: by name, by `*`, as a whole row, by
    COPY TO without a column list, by any new row (a domain's CHECK runs on an omitted column's default),
    and any use of a relation whose tenant column or a masked column has such a type."""
    for ref in refs:
        rel = ctx.implicit.relations.get(ref.name)
        if rel is None:
            continue
        owner = ref.ref.owner or {}
        named = set(found.column_names)
        rule = ref.rule
        added: set[str | None] = {*rule.masks, rule.tenant_column} if rule is not None else set()
        for col, risk in rel.columns.items():
            if col in named:
                _refuse(f'column "{col}" of {ref.name}', risk)
            if col in added:  # pgwarden's own filter or mask would pass it through those functions
                _refuse(f'{ref.name} (its tenant column or masked column "{col}")', risk)
        first = next(iter(rel.columns.items()), None)
        if first is not None:
            col, risk = first
            if (ref.ref.rv.get("alias") or {}).get("colnames"):  # t AS a(x, y, z) renames its columns
                _refuse(f'{ref.name} with a column alias list (it may rename its column "{col}")', risk)
            if ref.ref.role in ("insert", "merge", "copy_from"):
                _refuse(f'a new row of {ref.name} (its column "{col}" is filled, by default if need be)', risk)
            if found.star or (ref.ref.role == "copy_to" and not owner.get("attlist")):
                _refuse(
                    f'every column of {ref.name} (with "*", NATURAL JOIN or no column list), including "{col}",', risk
                )
        if rel.row is not None and named & {ref.ref.ref_name, ref.ref.rv["relname"]}:
            _refuse(f"a whole row of {ref.name}", rel.row)


def check_implicit_names(found: Found, ctx: Context) -> None:
    """The checks of types and calls a statement names (run before the checks of named calls, so a
    function-style cast is refused as a cast); its analysis is cached per statement text."""
    if ctx.implicit.everywhere is not None:
        _refuse("every statement in this database", ctx.implicit.everywhere)
    for parts in found.type_names:
        check_type(parts, ctx)
    check_named_calls(found, ctx)
