"""Refuse calls that PostgreSQL may route to the database's own functions and operators instead of built-ins."""

from __future__ import annotations

from .analyse import Found
from .context import Context
from .pg_names import BUILTIN_FUNCTIONS
from .refuse import Refused
from .resolve import dangerous, search_order

# Operators in the SQL the rewriter itself adds (tenant filters, masks, write guards):
# looked up by name like the client's, so a user-defined one of these would run too.
REWRITER_OPERATORS = ("=", "<=", "||", "-")


def shadowing_functions(name: str, ctx: Context) -> list[str]:
    """The user functions ("schema.name") an unqualified call of `name` may run that the policy does
    not allow: PostgreSQL picks the best-matching signature across every schema of the search_path,
    so a public.upper(varchar) wins over pg_catalog.upper(text) for a varchar argument.

    >>> from .context import UserRoutines
    >>> ctx = Context({}, {}, None, frozenset({"public.order_total"}),
    ...               routines=UserRoutines(frozenset({"public.upper", "public.order_total", "evil.lower"})))
    >>> shadowing_functions("upper", ctx), shadowing_functions("order_total", ctx), shadowing_functions("lower", ctx)
    (['public.upper'], [], [])
    """
    candidates = (f"{schema}.{name}" for schema in search_order(ctx.search_path) if schema != "pg_catalog")
    return [c for c in candidates if c in ctx.routines.functions and c not in ctx.allowed_functions]


def shadowing_operators(symbol: str, ctx: Context) -> list[tuple[str, str]]:
    """("schema.symbol", "schema.function") for each user-defined operator of this name on the
    search_path whose function the policy does not allow ("" for a shell operator).

    >>> from .context import UserRoutines
    >>> ctx = Context({}, {}, None, frozenset({"public.citext_eq"}), routines=UserRoutines(
    ...     operators={"public.===": frozenset({"public.leak_op"}), "public.=": frozenset({"public.citext_eq"})}))
    >>> shadowing_operators("===", ctx), shadowing_operators("=", ctx), shadowing_operators("<", ctx)
    ([('public.===', 'public.leak_op')], [], [])
    """
    out = []
    for schema in search_order(ctx.search_path):
        key = f"{schema}.{symbol}"
        out += [(key, f) for f in sorted(ctx.routines.operators.get(key, ())) if f not in ctx.allowed_functions]
    return out


def live_column_names(ctx: Context) -> frozenset[str]:
    """Every column name of the live schema (a field name that is one reads a column, not a call)."""
    return frozenset(c.name for cols in ctx.schema.values() for c in cols)


def check_routines(found: Found, ctx: Context, rewritten: bool) -> None:
    """Refuse calls and operators that may run a user function not in functions.allow, and
    field-notation calls (`(expr).name`) of refused functions.

    `rewritten` is True when pgwarden will add its own filters and masks to the statement.
    """
    for parts in found.functions:
        if len(parts) == 1 and (shadows := shadowing_functions(parts[0], ctx)):
            name = parts[0]
            builtin = f"Call pg_catalog.{name}(...) for the built-in, or ask" if name in BUILTIN_FUNCTIONS else "Ask"
            raise Refused(
                f"function {name}() is refused: the database defines {', '.join(shadows)}, which "
                "PostgreSQL may pick for this call, and functions.allow does not list it",
                f"{builtin} for {', '.join(shadows)} to be added to functions.allow.",
                "functions.allow",
            )
    symbols = dict.fromkeys(found.bare_operators + list(REWRITER_OPERATORS if rewritten else ()))
    for symbol in symbols:
        if operators := shadowing_operators(symbol, ctx):
            op, func = operators[0]
            via = f"function {func}" if func else "no function (a shell operator)"
            raise Refused(
                f"operator {symbol} is refused: the database defines operator {op} (with {via}), "
                "which PostgreSQL may use instead of the built-in, and functions.allow does not list it",
                f"Write OPERATOR(pg_catalog.{symbol}) for the built-in, or ask for "
                f"{func or op} to be added to functions.allow.",
                "functions.allow",
            )
    check_field_calls(found, ctx)


# Built-ins whose arguments pgwarden checks: called as (x).f their argument escapes the check.
ARGUMENT_CHECKED = frozenset({"current_setting", "set_config"})


def check_field_calls(found: Found, ctx: Context) -> None:
    """`(expr).f` calls f(expr) when f is no column: refuse it for refused functions and for
    built-ins whose arguments are checked (`('primary_conninfo'::text).current_setting`)."""
    refused = [
        n
        for n in dict.fromkeys(found.field_names)
        if shadowing_functions(n, ctx) or n in ARGUMENT_CHECKED or (n in BUILTIN_FUNCTIONS and dangerous(n))
    ]
    if not refused:
        return
    columns = live_column_names(ctx)
    for name in refused:
        if name not in columns:
            raise Refused(
                f'"(...).{name}" is refused: it is no column pgwarden knows, so PostgreSQL would '
                f"call function {name}(), which your role may not call this way",
                f"Select a column, or call the function as {name}(...).",
                "functions.allow",
            )
