"""Masks in writing statements: masked columns of the target read in SET, WHERE, ON CONFLICT, RETURNING."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from .analyse import node_type, returning
from .checks import Checked, Resolved
from .context import Column, Context
from .masks import mask_expr, quote_ident
from .pgparser import Node
from .refuse import Refused
from .splice import Edit, ParamCheck, Tokens, name_end

STAR = "ASCII_42"


def fields_of(colref: Node) -> list[str]:
    return [f["String"]["sval"] if "String" in f else "*" for f in colref["fields"]]


def expression_roots(r: Resolved) -> list[object]:
    """The parts of a writing statement evaluated against the target's rows (RETURNING aside)."""
    owner = r.ref.statement
    if r.ref.role == "update":
        return [t["ResTarget"].get("val") for t in owner.get("targetList", [])] + [owner.get("whereClause")]
    if r.ref.role == "delete":
        return [owner.get("whereClause")]
    clause = owner.get("onConflictClause") or {}
    return [t["ResTarget"].get("val") for t in clause.get("targetList", [])] + [clause.get("whereClause")]


def column_refs(node: object, nested: list[Node]) -> Iterator[Node]:
    """ColumnRef fields under `node`, not descending into subqueries (collected into `nested`)."""
    if isinstance(node, list):
        for item in node:
            yield from column_refs(item, nested)
        return
    if not isinstance(node, dict):
        return
    typed = node_type(node)
    if typed and typed[0] == "ColumnRef":
        yield typed[1]
    elif typed and typed[0] == "SelectStmt":
        nested.append(typed[1])
    else:
        for value in (typed[1] if typed else node).values():
            yield from column_refs(value, nested)


def _refused(
    r: Resolved, what: str, hint: str = "Name the columns you need; masked columns read as their masked value."
) -> Refused:
    return Refused(
        f'{what} of masked table "{r.name}" is refused: it would reveal masked values', hint, f"tables.{r.name}.masks"
    )


NESTED_HINT = (
    "Name the target's columns outside the subquery (e.g. SET a = t.b, WHERE t.b = ...), "
    "where masked columns read as their masked value; whole rows of it are never readable in a write."
)


def _star_text(r: Resolved, ctx: Context) -> str:
    ref = quote_ident(r.ref.ref_name)
    items = []
    for col in ctx.schema[r.name]:
        q = f"{ref}.{quote_ident(col.name)}"
        spec = r.governing.masks.get(col.name)
        items.append(q if spec is None else f"{mask_expr(spec, q, col)} AS {quote_ident(col.name)}")
    return ", ".join(items)


def target_names(r: Resolved) -> set[str]:
    """The names a reference may use for the target's row: its name or alias (`old`/`new` too for UPDATE)."""
    return {r.ref.ref_name, "old", "new"} if r.ref.role == "update" else {r.ref.ref_name}


def target_read(parts: list[str], r: Resolved, columns: Mapping[str, Column]) -> str | None:
    """What a column reference (its name parts) reads of a masked write target.

    "column" (a masked column), "star" (`*`, `t.*`, `schema.t.*`), "row" (the whole row), or None.
    `old.`/`new.` (PostgreSQL 18 RETURNING) name the target of an UPDATE too; `excluded.` never does.
    """
    target = target_names(r)
    if parts[-1] == "*":
        return "star" if len(parts) == 1 or parts[-2] in target else None
    if len(parts) == 1 and parts[0] in target and parts[0] not in columns:
        return "row"
    if parts[-1] in r.governing.masks and (len(parts) != 2 or parts[0] in target):
        return "column"
    return None


def nested_read(parts: list[str], r: Resolved, columns: Mapping[str, Column], unqualified: bool = True) -> str | None:
    """What a reference inside a subquery of a write may read of the masked target, or None.

    Fail closed: the subquery's own relations are not resolved, so a name that could be the
    target's (its name or alias, `old`, `new`) is taken to be it. An unqualified `*` expands the
    subquery's own FROM items only, never an outer row. `unqualified` False leaves bare column
    names alone (in FROM/USING items, which PostgreSQL never lets see the target).
    >>> from .examples import EXAMPLE
    >>> from .analyse import RelRef
    >>> r = Resolved(RelRef({"relname": "customers"}, "delete"), "public.customers", EXAMPLE.tables["public.customers"])
    >>> [nested_read(p, r, {}) for p in (["customers"], ["customers", "*"], ["ssn"], ["*"], ["x", "id"])]
    ['row', 'star', 'column', None, None]
    """
    names = target_names(r) | {"old", "new"}
    if parts[-1] == "*":
        return "star" if len(parts) >= 2 and parts[-2] in names else None
    if len(parts) == 1 and parts[0] in names and parts[0] not in columns:
        return "row"
    if parts[-1] in r.governing.masks and (parts[-2] in names if len(parts) > 1 else unqualified):
        return "column"
    return None


def mask_ref(r: Resolved, ctx: Context, toks: Tokens, ref: Node, named: bool) -> Edit | None:
    """The edit masking one column reference of the target, or None when it reads no masked value."""
    parts, me, columns = fields_of(ref), r.ref.ref_name, {c.name: c for c in ctx.schema[r.name]}
    read = target_read(parts, r, columns)
    if read is None:
        return None
    if read == "row":
        raise _refused(r, "a whole-row reference")
    i = toks.at(ref["location"])
    if read == "star":
        if len(parts) > 2:
            raise _refused(r, "a schema-qualified `*`")
        if parts[0] != me and len(parts) == 2:
            raise _refused(r, "old.* / new.*")
        if r.ref.statement.get("fromClause") or r.ref.statement.get("usingClause") or named:
            raise _refused(r, "`*` here")
        end = next(j for j in range(i, len(toks.names)) if toks.names[j] == STAR)
        return Edit(toks.starts[i], toks.ends[end], _star_text(r, ctx))
    if len(parts) > 2:
        raise _refused(r, "a schema-qualified column reference")
    col = parts[-1]
    qualifier = quote_ident(parts[0] if len(parts) == 2 else me)
    text = mask_expr(r.governing.masks[col], f"{qualifier}.{quote_ident(col)}", columns[col])
    return Edit(
        toks.starts[i], toks.ends[name_end(toks, i) - 1], text + ("" if named else f" AS {quote_ident(col)}"), "mask"
    )


NESTED_READS = {
    "row": "a whole-row reference to the target inside a subquery",
    "star": "a `target.*` inside a subquery",
    "column": "a subquery naming a masked column",
}


def check_nested(
    r: Resolved, nested: Sequence[object], columns: Mapping[str, Column], unqualified: bool = True
) -> None:
    """Refuse a subquery of a write, at any depth, that could read the target's row or masked columns by correlation."""
    for sub in nested:
        inner: list[Node] = []
        for ref in column_refs(sub, inner):
            read = nested_read(fields_of(ref), r, columns, unqualified)
            if read is not None:
                raise _refused(r, NESTED_READS[read], NESTED_HINT)
        check_nested(r, inner, columns, unqualified)


def mask_write_columns(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """Replace each read of a masked target column in a write by its masked value.

    `RETURNING *` lists the columns, masked.
    >>> from .examples import run_rule
    >>> print(run_rule(mask_write_columns, "UPDATE customers SET id = 2 WHERE ssn = '1' RETURNING ssn"))
    UPDATE customers SET id = 2 WHERE CAST('****' AS text) = '1' RETURNING CAST('****' AS text) AS "ssn"
    """
    out: list[Edit | ParamCheck] = []
    for r in c.refs:
        if r.ref.role not in ("insert", "update", "delete") or r.rule is None or not r.rule.masks:
            continue
        nested: list[Node] = []
        seen: set[int] = set()  # SET (a, b) = ROW(...) repeats its source once per column
        for ref in column_refs(expression_roots(r), nested):
            edit = None if ref["location"] in seen else mask_ref(r, ctx, toks, ref, True)
            seen.add(ref["location"])
            out += [edit] if edit else []
        if (r.ref.statement.get("returningClause") or {}).get("options"):
            raise _refused(r, "RETURNING WITH (OLD/NEW AS ...)")
        for item in returning(r.ref.statement):
            res = item["ResTarget"]
            bare = "ColumnRef" in (res.get("val") or {}) and not res.get("name")
            for ref in column_refs(res.get("val"), nested):
                edit = mask_ref(r, ctx, toks, ref, not bare)
                out += [edit] if edit else []
        columns = {col.name: col for col in ctx.schema[r.name]}
        check_nested(r, nested, columns)
        # PostgreSQL hides the target from FROM/USING items (LATERAL, JOIN ... ON); refused here all the same
        check_nested(r, [r.ref.statement.get("fromClause"), r.ref.statement.get("usingClause")], columns, False)
    return out
