"""INSERT rules: the tenant column is filled in, or every value the client gives for it is checked."""

from __future__ import annotations

from .checks import Checked, Resolved
from .context import Context
from .masks import quote_ident, quote_literal
from .pgparser import Node
from .refuse import Refused
from .splice import COMMA, Edit, ParamCheck, Tokens, clause_end, matching_close, name_end
from .writes import tenant_targets, tenant_value

OPEN_PAREN = "ASCII_40"
TARGET_LIST_STOPS = frozenset(
    {
        "FROM",
        "WHERE",
        "GROUP_P",
        "HAVING",
        "WINDOW",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "FETCH",
        "FOR",
        "INTO",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "ON",
        "RETURNING",
    }
)
SOURCE_START = frozenset({"VALUES", "SELECT", "DEFAULT", "OVERRIDING", "WITH", OPEN_PAREN})


def _cannot(why: str, r: Resolved) -> Refused:
    return Refused(
        f'INSERT into tenant-scoped "{r.name}" is refused: {why}',
        f"Name the columns and give {r.tenant_column} as a literal or parameter, "
        "or use INSERT ... VALUES / a simple INSERT ... SELECT.",
        f"tables.{r.name}",
    )


def source_rows(owner: Node) -> tuple[str, list[list[Node]]]:
    """("default" | "values" | "select", rows of value expressions) of an INSERT's source."""
    source = owner.get("selectStmt")
    if source is None:
        return "default", []
    sel = source["SelectStmt"]
    if sel.get("valuesLists"):
        return "values", [row["List"]["items"] for row in sel["valuesLists"]]
    if sel.get("op") == "SETOP_NONE" and sel.get("targetList"):
        return "select", [[t["ResTarget"]["val"] for t in sel["targetList"]]]
    return "other", []


def _is_star(expr: Node) -> bool:
    fields = (expr.get("ColumnRef") or {}).get("fields", [])
    return bool(fields) and "A_Star" in fields[-1]


def given_columns(owner: Node, rows: list[list[Node]], table: list[str]) -> list[str] | None:
    """The columns the client supplies values for (its list, else the table's first N); None if uncountable."""
    if owner.get("cols"):
        return [t["ResTarget"]["name"] for t in owner["cols"]]
    if not rows:
        return []
    if any(_is_star(e) for e in rows[0]):
        return None
    return table[: len(rows[0])]


def value_index(row: list[Node], k: int, ncols: int) -> int | None:
    """Where column `k`'s value is in a row that may hold `*`s (counted from the nearer end), else None.

    >>> star = {"ColumnRef": {"fields": [{"A_Star": {}}]}}
    >>> value_index([star, {"A_Const": {}}], 2, 3), value_index([star], 0, 2)
    (1, None)
    """
    stars = [i for i, e in enumerate(row) if _is_star(e)]
    if not stars:
        return k if k < len(row) else None
    if k < stars[0]:
        return k
    from_end = len(row) - (ncols - k)
    return from_end if from_end > stars[-1] else None


def target_list_end(toks: Tokens, i: int) -> int:
    """Index just past the target list of the SELECT keyword at token `i`.

    `DISTINCT ON (...)` / `ALL` before the list and `IS DISTINCT FROM` inside it are skipped.
    >>> from .splice import scan
    >>> target_list_end(scan("SELECT DISTINCT ON (a) a, b IS DISTINCT FROM c FROM t"), 0)
    13
    """
    j = i + 1
    if toks.names[j : j + 1] == ("ALL",):
        j += 1
    elif toks.names[j : j + 1] == ("DISTINCT",):
        j += 1
        if toks.names[j : j + 2] == ("ON", OPEN_PAREN):
            j = matching_close(toks, j + 1) + 1
    while True:
        j = clause_end(toks, j, TARGET_LIST_STOPS)
        if j < len(toks.names) and toks.names[j] == "FROM" and toks.names[j - 1] == "DISTINCT":
            j += 1
            continue
        return j


def _value_edits(toks: Tokens, v: int, rows: int, tenant: str, r: Resolved) -> list[Edit]:
    edits, i = [], v + 1
    while i < len(toks.names) and toks.names[i] == OPEN_PAREN:
        close = matching_close(toks, i)
        edits.append(Edit(toks.starts[close], toks.starts[close], f", {quote_literal(tenant)}"))
        if close + 1 >= len(toks.names) or toks.names[close + 1] != COMMA:
            break
        i = close + 2
    if len(edits) != rows:
        raise _cannot("its VALUES rows could not be located", r)
    return edits


def add_tenant(
    r: Resolved, ctx: Context, toks: Tokens, shape: str, rows: list[list[Node]], given: list[str]
) -> list[Edit]:
    """Edits that add the tenant column and its value to an INSERT that leaves it out."""
    column, tenant = r.tenant_column, ctx.session_tenant
    after_name = name_end(toks, toks.at(r.ref.rv["location"]))
    if shape == "default":
        d = clause_end(toks, after_name, frozenset({"DEFAULT"}))
        return [Edit(toks.starts[d], toks.ends[d + 1], f"({quote_ident(column)}) VALUES ({quote_literal(tenant)})")]
    src = clause_end(toks, after_name, SOURCE_START)
    if src >= len(toks.names):
        raise _cannot("its source could not be located", r)
    if r.ref.statement.get("cols"):
        if toks.names[src] != OPEN_PAREN:
            raise _cannot("its column list could not be located", r)
        close = matching_close(toks, src)
        edits = [Edit(toks.starts[close], toks.starts[close], f", {quote_ident(column)}")]
        src = clause_end(toks, close + 1, SOURCE_START - {OPEN_PAREN})
    else:
        cols = ", ".join(quote_ident(c) for c in [*given, column])
        edits = [Edit(toks.ends[src - 1], toks.ends[src - 1], f" ({cols})")]
    if shape == "values":
        return edits + _value_edits(toks, clause_end(toks, src, frozenset({"VALUES"})), len(rows), tenant, r)
    sel = clause_end(toks, src, frozenset({"SELECT"}))
    if sel >= len(toks.names) or toks.names[sel] != "SELECT":
        raise _cannot("its SELECT could not be located", r)
    end = target_list_end(toks, sel)
    return edits + [Edit(toks.ends[end - 1], toks.ends[end - 1], f", {quote_literal(tenant)}")]


def guard_inserts(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """INSERT into a tenant-scoped table: add the tenant column, or check the client's values for it.

    >>> from .examples import run_rule
    >>> print(run_rule(guard_inserts, "INSERT INTO orders (id, total) VALUES ($1, $2), (3, 4)"))
    INSERT INTO orders (id, total, "tenant_id") VALUES ($1, $2, 'acme'), (3, 4, 'acme')
    >>> print(run_rule(guard_inserts, "INSERT INTO orders (id, tenant_id) VALUES ($1, $2)"))
    INSERT INTO orders (id, tenant_id) VALUES ($1, $2)  -- checks [(2, 'acme')]
    >>> print(run_rule(guard_inserts, "INSERT INTO orders DEFAULT VALUES"))
    INSERT INTO orders ("tenant_id") VALUES ('acme')
    """
    out: list[Edit | ParamCheck] = []
    for r in tenant_targets(c, "insert"):
        shape, rows = source_rows(r.ref.statement)
        if shape == "other":
            raise _cannot("its source is neither VALUES nor a simple SELECT", r)
        table = [col.name for col in ctx.schema[r.name]]
        given = given_columns(r.ref.statement, rows, table)
        if given is None:
            raise _cannot("its columns cannot be counted", r)
        if r.tenant_column in given:
            for row in rows:
                i = value_index(row, given.index(r.tenant_column), len(given))
                if i is None:
                    raise _cannot("the tenant column's value cannot be located", r)
                out += tenant_value(row[i], r.tenant_column, ctx.session_tenant)
        else:
            out += add_tenant(r, ctx, toks, shape, rows, given)
    return out
