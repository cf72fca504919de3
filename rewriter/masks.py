"""SQL fragments built from the live schema: quoting, mask expressions, protected projections."""

from __future__ import annotations

from .context import Column, MaskSpec, TableRule

TEXT_TYPES = ("text", "character varying", "character", "varchar", "char", "bpchar", "citext", "name")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted.

    >>> quote_ident('we"ird')
    '"we""ird"'
    """
    if "\x00" in name:
        raise ValueError("identifier with a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """A "schema.relation" name as two quoted identifiers.

    >>> quote_qualified("public.orders")
    '"public"."orders"'
    """
    schema, _, rel = name.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(rel)}"


def quote_literal(value: object) -> str:
    r"""A SQL literal for a str/int/float/bool/None value; E'...' when it holds a backslash,
    so it reads the same whatever standard_conforming_strings says.

    >>> quote_literal("o'k"), quote_literal(None), quote_literal(2)
    ("'o''k'", 'NULL', '2')
    >>> print(quote_literal("a\\b"))
    E'a\\b'
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "\x00" in text:
        raise ValueError("literal with a NUL byte")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def is_text(type_: str) -> bool:
    """True for character types, whose masks keep the type.

    >>> is_text("character varying(20)"), is_text("integer")
    (True, False)
    """
    return type_.lower().split("(")[0].strip() in TEXT_TYPES


def _partial(v: str, first: int, last: int) -> str:
    s = f"CAST({v} AS text)"
    n = f"pg_catalog.length({s})"
    return (
        f"CASE WHEN {n} <= {first + last} THEN pg_catalog.repeat('*', {n}) "
        f"ELSE pg_catalog.left({s}, {first}) || pg_catalog.repeat('*', {n} - {first + last}) "
        f"|| pg_catalog.right({s}, {last}) END"
    )


def _number(spec: MaskSpec, name: str) -> int:
    """An integer option of a mask (keep_first, keep_last, digits), 0 when absent."""
    value = spec.option(name, 0)
    if not isinstance(value, int | float | str):
        raise TypeError(f"mask option {name} is not a number: {value!r}")
    return int(value)


def mask_value(spec: MaskSpec, v: str, column: Column) -> str:
    """The masked value of column reference `v`, before the cast back to the column's type.

    >>> mask_value(MaskSpec("email"), '"email"', Column("email", "text"))
    'CASE WHEN "email" IS NULL THEN NULL ELSE \\'****@\\' || pg_catalog.split_part(CAST("email" AS text), \\'@\\', 2) END'
    """
    kind = spec.kind
    if kind == "redact":
        return "'****'" if is_text(column.type) else "NULL"
    if kind == "null":
        return "NULL"
    if kind == "email":
        return f"CASE WHEN {v} IS NULL THEN NULL ELSE '****@' || pg_catalog.split_part(CAST({v} AS text), '@', 2) END"
    if kind == "partial":
        return _partial(v, _number(spec, "keep_first"), _number(spec, "keep_last"))
    if kind == "hash":
        salted = f"{quote_literal(str(spec.option('salt', '')))} || CAST({v} AS text)"
        return f"pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to({salted}, 'UTF8')), 'hex')"
    if kind == "year":
        return f"pg_catalog.date_trunc('year', {v})"
    if kind == "round":
        return f"pg_catalog.round(CAST({v} AS numeric), {_number(spec, 'digits')})"
    if kind == "constant":
        return quote_literal(spec.option("value"))
    raise ValueError(f"unknown mask kind {kind!r}")


def mask_expr(spec: MaskSpec, v: str, column: Column) -> str:
    """`CAST(<masked value> AS <type>)`; a hash of a non-text column stays text (it cannot keep the type).

    >>> mask_expr(MaskSpec("redact"), '"ssn"', Column("ssn", "text"))
    "CAST('****' AS text)"
    """
    value = mask_value(spec, v, column)
    if spec.kind == "hash" and not is_text(column.type):
        return f"CAST({value} AS text)"
    return f"CAST({value} AS {column.type})"


def tenant_predicate(ref: str | None, column: str, tenant: str) -> str:
    """`"ref"."column" = 'tenant'` (unqualified when `ref` is None).

    >>> tenant_predicate("o", "tenant_id", "acme")
    '"o"."tenant_id" = \\'acme\\''
    """
    target = quote_ident(column) if ref is None else f"{quote_ident(ref)}.{quote_ident(column)}"
    return f"{target} = {quote_literal(tenant)}"


def projection(
    rule: TableRule, columns: tuple[Column, ...], tenant: str | None, only: bool = False, fence: bool = False
) -> str:
    """P(t): the protected projection of a table, in parentheses, without an alias (`only`: FROM ONLY).

    `fence` adds `OFFSET 0`: PostgreSQL then neither pulls the subquery up nor pushes the
    statement's conditions into it, so its tenant filter and masks apply first (see leakproof.py).

    >>> from .context import TableRule
    >>> rule = TableRule("public.c", "tenant_id", frozenset({"select"}), {"ssn": MaskSpec("redact")})
    >>> projection(rule, (Column("id", "integer"), Column("tenant_id", "text"), Column("ssn", "text")), "acme")
    '(SELECT "id", "tenant_id", CAST(\\'****\\' AS text) AS "ssn" FROM "public"."c" WHERE "tenant_id" = \\'acme\\')'
    """
    items = []
    for col in columns:
        q = quote_ident(col.name)
        spec = rule.masks.get(col.name)
        items.append(q if spec is None else f"{mask_expr(spec, q, col)} AS {q}")
    where = ""
    if rule.tenant_column is not None:
        if tenant is None:
            raise ValueError("a tenant-scoped table needs a tenant")
        where = f" WHERE {tenant_predicate(None, rule.tenant_column, tenant)}"
    source = ("ONLY " if only else "") + quote_qualified(rule.name)
    return f"(SELECT {', '.join(items)} FROM {source}{where}{' OFFSET 0' if fence else ''})"
