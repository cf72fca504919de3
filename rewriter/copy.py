"""COPY rule: `COPY t TO` of a protected table becomes `COPY (SELECT ... FROM P(t)) TO`."""

from __future__ import annotations

from .checks import Checked
from .context import Context
from .masks import projection, quote_ident
from .splice import Edit, ParamCheck, Tokens, matching_close, name_end

OPEN_PAREN = "ASCII_40"


def copy_to_query(c: Checked, ctx: Context, toks: Tokens) -> list[Edit | ParamCheck]:
    """`COPY t [(cols)] TO` of a protected table -> `COPY (SELECT cols FROM P(t) AS "t") TO`.

    >>> from .examples import run_rule
    >>> print(run_rule(copy_to_query, "COPY orders (id) TO STDOUT"))
    COPY (SELECT "id" FROM (SELECT "id", "tenant_id", "total" FROM "public"."orders" WHERE "tenant_id" = 'acme') AS "orders") TO STDOUT
    """
    out: list[Edit | ParamCheck] = []
    for r in c.refs:
        if r.ref.role != "copy_to" or not r.protected:
            continue
        i = toks.at(r.ref.rv["location"])
        j = name_end(toks, i)
        end = toks.ends[j - 1]
        attlist = r.ref.statement.get("attlist") or []
        if attlist and j < len(toks.names) and toks.names[j] == OPEN_PAREN:
            end = toks.ends[matching_close(toks, j)]
        cols = ", ".join(quote_ident(a["String"]["sval"]) for a in attlist) or "*"
        source = projection(r.governing, ctx.schema[r.name], ctx.tenant)
        out.append(Edit(toks.starts[i], end, f"(SELECT {cols} FROM {source} AS {quote_ident(r.ref.rv['relname'])})"))
    return out
