"""Decision 6: re-parse the rewritten text with PostgreSQL's parser and refuse unless it is what we meant.

Both texts are normalised: our substituted projections, tenant predicates, tenant
values and mask expressions become markers on the rewritten side, and the
references they replaced become the same markers on the client's side. Then
  - the normalised rewritten statement must pass every policy check again and
    read no protected table and no masked column outside a marker, and
  - it must equal the client's normalised statement (locations aside), so a
    splice cannot have changed how the client's own text parses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import overload

from .analyse import node_type, returning
from .checks import Judged, check_calls, check_ref
from .classify import statements, walk_statement
from .context import Context
from .inserts import given_columns, source_rows, value_index
from .leakproof import first_leak
from .masks import mask_expr, projection, quote_ident, tenant_predicate
from .pgparser import Node, ast
from .refuse import Refused
from .resolve import resolve_relation
from .splice import Edit
from .write_masks import check_nested, column_refs, expression_roots, fields_of, target_read
from .writes import tenant_value


def _parse_locations() -> frozenset[str]:
    """Every field pglast's nodes type as a parse location (byte offsets that move with any edit)."""
    names = {"stmt_location", "stmt_len"}
    for cls in vars(ast).values():
        slots = getattr(cls, "__slots__", None)
        if isinstance(slots, dict):
            names.update(k for k, info in slots.items() if getattr(info, "c_type", None) == "ParseLoc")
    return frozenset(names)


LOCATIONS = _parse_locations()
# Nodes whose only parse location is their own `location` field (constants, parameters).
LEAVES = frozenset({"A_Const", "ParamRef", "String", "Integer", "Float", "Boolean", "BitString"})


def _fail(why: str) -> Refused:
    return Refused(
        f"statement refused: its rewrite did not verify ({why})",
        "Simplify the statement, or report it to the pgwarden maintainers.",
        "verify",
    )


@overload
def strip(node: Node) -> Node: ...
@overload
def strip(node: object) -> object: ...
def strip(node: object) -> object:
    """A copy of a parse tree without location fields.

    >>> strip({"A_Const": {"ival": {"ival": 1}, "location": 7}})
    {'A_Const': {'ival': {'ival': 1}}}
    """
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in LOCATIONS or not isinstance(v, int)}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


@lru_cache(maxsize=4096)
def fragment_tree(select_sql: str) -> str:
    """The stripped first target (or FROM item) of `select_sql`, as canonical JSON."""
    ((_, fields),) = statements(select_sql)
    node = (
        fields["fromClause"][0]["RangeSubselect"]["subquery"]
        if "fromClause" in fields
        else fields["targetList"][0]["ResTarget"]["val"]
    )
    return json.dumps(strip(node), sort_keys=True)


def canon(node: object) -> str:
    return json.dumps(strip(node), sort_keys=True)


@dataclass
class Side:
    """How to normalise one of the two texts."""

    ctx: Context
    new: bool
    substituted: frozenset[int]  # client side: locations of RangeVars we substituted
    masked_refs: frozenset[int]  # client side: locations of ColumnRefs we masked
    masks: dict[str, str]  # rewritten side: canonical mask expression -> column
    starred: bool  # a RETURNING * was expanded: RETURNING lists are not compared
    params: frozenset[int]  # parameter numbers the Rewrite checks at Bind
    requalified: frozenset[int]  # client side: locations of schema.table.column refs we shortened
    fence: bool = False  # the statement is not leak-free: projections fenced, write conditions guarded


Normaliser = Callable[[Node, "Side"], object]
"""A node type's own normalisation in `norm` (NORMALISERS): its fields -> the normalised node, None for the default."""


@overload
def norm(node: Node, side: Side) -> Node: ...
@overload
def norm(node: object, side: Side) -> object: ...
def norm(node: object, side: Side) -> object:
    """The normalised, location-free form of a parse tree (see the module docstring)."""
    if isinstance(node, list):
        return [norm(v, side) for v in node]
    typed = node_type(node)
    if typed is None:
        if isinstance(node, dict):
            return {k: norm(v, side) for k, v in node.items() if k not in LOCATIONS or not isinstance(v, int)}
        return node
    kind, fields = typed
    if kind in LEAVES:
        return {kind: {k: v for k, v in fields.items() if k != "location"}}
    handler = NORMALISERS.get(kind)
    if handler is not None:
        out = handler(fields, side)
        if out is not None:
            return out
    return {kind: norm(fields, side)}


def _marker(name: str, alias: Node | None, relname: str, inh: bool) -> Node:
    alias = alias or {"aliasname": relname}
    return {"Substituted": {"name": name, "alias": strip(alias), "inh": inh}}


def _range_var(rv: Node, side: Side) -> object:
    if side.new or rv["location"] not in side.substituted:
        return None
    name = resolve_relation(rv.get("schemaname"), rv["relname"], side.ctx)
    return _marker(name, rv.get("alias"), rv["relname"], bool(rv.get("inh")))


def _range_subselect(fields: Node, side: Side) -> object:
    sub = node_type(fields.get("subquery"))
    from_ = sub[1].get("fromClause", []) if sub and sub[0] == "SelectStmt" else []
    inner = node_type(from_[0]) if len(from_) == 1 else None
    if not side.new or fields.get("lateral") or inner is None or inner[0] != "RangeVar" or "schemaname" not in inner[1]:
        return None
    rv = inner[1]
    name = f"{rv['schemaname']}.{rv['relname']}"
    rule = side.ctx.tables.get(name)
    if rule is None or not rule.protected or name not in side.ctx.schema or not fields.get("alias"):
        return None
    text = projection(rule, side.ctx.schema[name], side.ctx.tenant, only=not rv.get("inh"), fence=side.fence)
    if canon(fields["subquery"]) != fragment_tree(f"SELECT * FROM {text} AS x"):
        return None
    return _marker(name, fields["alias"], fields["alias"]["aliasname"], bool(rv.get("inh")))


def _column_ref(fields: Node, side: Side) -> object:
    if not side.new and fields["location"] in side.masked_refs:
        return {"Masked": fields["fields"][-1]["String"]["sval"]}
    if not side.new and fields["location"] in side.requalified:
        return {"ColumnRef": strip({**fields, "fields": fields["fields"][1:]})}
    return None


def _res_target(fields: Node, side: Side) -> object:
    """A bare masked column in RETURNING gets its name spelled out (`AS "col"`), as the rule does."""
    ref = (fields.get("val") or {}).get("ColumnRef")
    if side.new or fields.get("name") or ref is None or ref["location"] not in side.masked_refs:
        return None
    return {"ResTarget": norm({**fields, "name": ref["fields"][-1]["String"]["sval"]}, side)}


def _type_cast(fields: Node, side: Side) -> object:
    if side.new and side.masks:
        col = side.masks.get(canon({"TypeCast": fields}))
        if col is not None:
            return {"Masked": col}
    return None


def _strip_predicate(where: Node | None, ref: str, column: str, side: Side) -> Node | None:
    """The rewritten WHERE without our leading tenant conjunct (and its CASE guard when the
    statement is fenced); refused when either is missing."""
    pred = fragment_tree(f"SELECT {tenant_predicate(ref, column, side.ctx.session_tenant)}")
    if where is None:
        raise _fail("a tenant predicate is missing")
    if (where.get("A_Expr") or {}).get("kind") == "AEXPR_OP" and canon(where) == pred:
        return None
    bool_expr = where.get("BoolExpr") or {}
    args = bool_expr.get("args", [])
    if bool_expr.get("boolop") != "AND_EXPR" or len(args) != 2 or canon(args[0]) != pred:
        raise _fail("the tenant predicate is not the first top-level conjunct")
    if not side.fence:
        condition: Node | None = args[1]
        return condition
    case = (args[1] or {}).get("CaseExpr") or {}
    whens = [w.get("CaseWhen") or {} for w in case.get("args", [])]
    if case.get("arg") or case.get("defresult") or len(whens) != 1 or canon(whens[0].get("expr")) != pred:
        raise _fail("the client's condition is not guarded by the tenant predicate")
    guarded: Node | None = whens[0]["result"]
    return guarded


def _strip_tenant_column(out: Node, name: str, column: str, side: Side) -> Node:
    """An INSERT with explicit columns, without the tenant column and its values.

    On the rewritten side the tenant column must be there, each value the tenant or a checked parameter.
    """
    shape, rows = source_rows(out)
    if shape == "other":
        raise _fail("an INSERT source that cannot be checked")
    given = given_columns(out, rows, [c.name for c in side.ctx.schema[name]])
    if given is None:
        raise _fail("an INSERT whose columns cannot be counted")
    cols = [strip(c) for c in out.get("cols") or []] or [{"ResTarget": {"name": c}} for c in given]
    names = [c["ResTarget"]["name"] for c in cols]
    if column not in names:
        if side.new:
            raise _fail("an INSERT without the tenant column")
        return {**out, "cols": cols}
    k = names.index(column)
    located = [value_index(row, k, len(names)) for row in rows]
    places = [i for i in located if i is not None]
    if len(places) != len(located):
        raise _fail("the tenant column's value cannot be located")
    if side.new:
        for row, i in zip(rows, places):
            if any(c.number not in side.params for c in tenant_value(row[i], column, side.ctx.session_tenant)):
                raise _fail("a tenant parameter without its check")
    result = {**out, "cols": cols[:k] + cols[k + 1 :]}
    sel = dict(out["selectStmt"]["SelectStmt"])
    kept = [r[:i] + r[i + 1 :] for r, i in zip(rows, places)]
    if shape == "values":
        if kept == [[]]:
            result.pop("selectStmt")
            return result
        sel["valuesLists"] = [{"List": {"items": r}} for r in kept]
    else:
        sel["targetList"] = [t for j, t in enumerate(sel["targetList"]) if j != places[0]]
    result["selectStmt"] = {"SelectStmt": sel}
    return result


def _write(kind: str) -> Normaliser:
    def handle(fields: Node, side: Side) -> object:
        rv = fields["relation"]
        name = resolve_relation(rv.get("schemaname"), rv["relname"], side.ctx)
        rule = side.ctx.tables.get(name)
        out = {**fields, "relation": {**strip(rv), "schemaname": name.partition(".")[0]}}
        if rule is not None and rule.tenant_column:
            ref = (rv.get("alias") or {}).get("aliasname", rv["relname"])
            if kind in ("UpdateStmt", "DeleteStmt") and side.new:
                out["whereClause"] = _strip_predicate(out.get("whereClause"), ref, rule.tenant_column, side)
            if kind == "InsertStmt":
                out = _strip_tenant_column(out, name, rule.tenant_column, side)
                clause = out.get("onConflictClause")
                if side.new and clause and clause.get("action") == "ONCONFLICT_UPDATE":
                    where = _strip_predicate(clause.get("whereClause"), ref, rule.tenant_column, side)
                    clause = {**clause, "whereClause": where}
                    out["onConflictClause"] = {k: v for k, v in clause.items() if v is not None}
        return {kind: norm({k: v for k, v in out.items() if v is not None}, side)}

    return handle


def _copy(fields: Node, side: Side) -> object:
    rv = fields.get("relation")
    if side.new or rv is None or rv["location"] not in side.substituted:
        return None
    name = resolve_relation(rv.get("schemaname"), rv["relname"], side.ctx)
    cols = ", ".join(quote_ident(a["String"]["sval"]) for a in fields.get("attlist") or []) or "*"
    ((_, query),) = statements(f"SELECT {cols} FROM x")
    query = {**strip(query), "fromClause": [_marker(name, None, rv["relname"], True)]}
    rest = {k: v for k, v in fields.items() if k not in ("relation", "attlist")}
    return {"CopyStmt": {**norm(rest, side), "query": {"SelectStmt": query}}}


NORMALISERS: dict[str, Normaliser] = {
    "RangeVar": _range_var,
    "RangeSubselect": _range_subselect,
    "ColumnRef": _column_ref,
    "TypeCast": _type_cast,
    "ResTarget": _res_target,
    "InsertStmt": _write("InsertStmt"),
    "UpdateStmt": _write("UpdateStmt"),
    "DeleteStmt": _write("DeleteStmt"),
    "CopyStmt": _copy,
}


def recheck(kind: str, fields: Node, ctx: Context) -> None:
    """The normalised rewritten statement passes the policy and reads nothing protected directly."""
    found = walk_statement(kind, fields)
    check_calls(found, ctx)
    for ref in found.refs:
        r = check_ref(ref, ctx)
        if r.protected and ref.role in ("select", "copy_to"):
            raise _fail(f'"{r.name}" is read outside its protected projection')
        if ref.role in ("insert", "update", "delete") and r.rule is not None and r.rule.masks:
            nested: list[Node] = []
            roots = [expression_roots(r), [i["ResTarget"].get("val") for i in returning(ref.statement)]]
            columns = {c.name: c for c in ctx.schema[r.name]}
            for col in column_refs(roots, nested):
                if target_read(fields_of(col), r, columns) is not None:
                    raise _fail(f'a masked column of "{r.name}" is read unmasked')
            check_nested(r, nested, columns)


def sides(original: bytes, ctx: Context, judged: list[Judged]) -> tuple[Side, Side]:
    """The client-side and rewritten-side normalisation settings for one message."""
    edits: list[Edit] = [e for j in judged for e in j.edits]
    substituted = frozenset(
        r.ref.rv["location"]
        for j in judged
        for r in j.checked.refs
        if r.protected and r.ref.role in ("select", "copy_to")
    )
    masked_refs = frozenset(e.start for e in edits if e.kind == "mask")
    requalified = frozenset(e.start for e in edits if e.kind == "requalify")
    starred = any(e.end > e.start and original[e.start : e.end].endswith(b"*") for e in edits)
    masks: dict[str, str] = {}
    for j in judged:
        for r in j.checked.refs:
            if r.ref.role in ("insert", "update", "delete") and r.rule is not None:
                columns = {c.name: c for c in ctx.schema.get(r.name, ())}
                for col, spec in r.rule.masks.items():
                    text = mask_expr(spec, f"{quote_ident(r.ref.ref_name)}.{quote_ident(col)}", columns[col])
                    masks[fragment_tree(f"SELECT {text}")] = col
    params = frozenset(c.number for j in judged for c in j.checks)
    return (
        Side(ctx, False, substituted, masked_refs, {}, starred, params, requalified),
        Side(ctx, True, frozenset(), frozenset(), masks, starred, params, frozenset()),
    )


def verify(original: str, new: str, ctx: Context, judged: list[Judged]) -> None:
    """Refuse (raise Refused) unless `new` is `original` with exactly our edits, and safe."""
    try:
        before, after = statements(original), statements(new)
    except Exception as exc:
        raise _fail(f"the rewritten text does not parse: {exc}") from None
    if [k for k, _ in before] != [k for k, _ in after]:
        raise _fail("the rewritten text has other statements")
    client, ours = sides(original.encode(), ctx, judged)
    for (kind, fields), (_, new_fields) in zip(before, after):
        ours = replace(ours, fence=first_leak(kind, fields) is not None)
        theirs_n, ours_n = norm({kind: fields}, client), norm({kind: new_fields}, ours)
        recheck(kind, ours_n[kind], ctx)
        if client.starred:
            for tree in (theirs_n, ours_n):
                tree[kind].pop("returningClause", None)
        if theirs_n != ours_n:
            raise _fail("the rewritten statement parses differently outside the edits")
