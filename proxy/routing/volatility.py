"""Which reads a replica may serve: function, operator and relation volatility read from the catalog, and the judge."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from rewriter.readonly import READ, WRITE, ReadShape, read_shape

# Every function with the worst volatility of itself and, for an aggregate, of its support functions
# (CREATE AGGREGATE records an aggregate as immutable whatever its transition function is).
_FUNCTIONS = """
select p.oid::int, n.nspname, p.proname, greatest(p.provolatile::text, coalesce((
    select max(f.provolatile::text) from pg_aggregate a join pg_proc f on f.oid in (
        a.aggtransfn::oid, a.aggfinalfn::oid, a.aggcombinefn::oid, a.aggserialfn::oid,
        a.aggdeserialfn::oid, a.aggmtransfn::oid, a.aggminvtransfn::oid, a.aggmfinalfn::oid)
    where a.aggfnoid = p.oid), 'i')) as volatility,
  (p.pronargs >= 1 and p.pronargs - p.pronargdefaults <= 1 and p.proargtypes[0] <> 'internal'::regtype)
    or p.provariadic <> 0 as one_argument
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
"""

# Every operator with its function's volatility (a shell operator, without one, counts as volatile).
_OPERATORS = """
select o.oid::int, n.nspname, o.oprname, coalesce(p.provolatile::text, 'v') as volatility
from pg_operator o join pg_namespace n on n.oid = o.oprnamespace left join pg_proc p on p.oid = o.oprcode
"""

# Every relation one can read, with its kind, persistence and whether it has row security policies.
_RELATIONS = """
select c.oid::int, n.nspname, c.relname, c.relkind::text, c.relpersistence::text,
  exists (select from pg_policy pol where pol.polrelid = c.oid) as policed
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
"""

# What reading a relation also reads or calls: its view's SELECT rule and its row security policies
# (relations, functions, operators), and its partitions and inheritance children.
_USES = """
select r.ev_class::int as rel, d.refclassid::regclass::text as catalog, d.refobjid::int as obj
from pg_rewrite r join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
where r.ev_type = '1' and d.refobjid <> r.ev_class
  and d.refclassid in ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_operator'::regclass)
union
select pol.polrelid::int, d.refclassid::regclass::text, d.refobjid::int
from pg_policy pol join pg_depend d on d.classid = 'pg_policy'::regclass and d.objid = pol.oid
where d.refobjid <> pol.polrelid
  and d.refclassid in ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_operator'::regclass)
union
select i.inhparent::int, 'pg_class', i.inhrelid::int from pg_inherits i
"""

# The text of each view's query and of each table's row security policies (as one SELECT), printed with
# only pg_catalog on the search_path so every other name comes schema-qualified: pg_depend records no
# dependency on a built-in (pinned) function such as nextval() or random(), so their calls are read here.
_DEFINITIONS = """
select c.oid::int as rel, pg_get_viewdef(c.oid) as sql from pg_class c where c.relkind in ('v', 'm')
union all
select pol.polrelid::int, 'SELECT ' || coalesce(pg_get_expr(pol.polqual, pol.polrelid), 'true') || ', '
  || coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), 'true')
from pg_policy pol
"""

# Relation marks, most telling first: temporary, unlogged, a view or policy over an unlogged table,
# a view calling a volatile function, a table whose row security policy calls one.
MARKS = ("t", "u", "w", "v", "p")
# The use a relation's definition makes of a volatile or unknown function or operator, found in its text.
VOLATILE_DEFINITION = ("definition", 0)
WHY = {
    "t": "reads temporary table {}",
    "u": "reads unlogged table {}",
    "w": "reads {}, which reads an unlogged or temporary table (by a view, a policy or a partition)",
    "v": "reads view {} that calls a volatile function",
    "p": "reads table {} whose row security policy calls a volatile function",
}


@dataclass(frozen=True, slots=True)
class Volatility:
    """What the catalog says about the names a read uses ("name" and "schema.name" alike).

    functions and operators: the worst volatility ('i' < 's' < 'v') over overloads (and, for a bare
    name, over schemas); relations: a mark of MARKS for the relations a standby cannot serve or
    whose reading calls a volatile function; absent means a plain relation. field_functions: like
    functions, over the overloads callable with one argument, as `x.f` calls f(x) when x has no
    column f (None: judge such names by `functions`).
    """

    functions: Mapping[str, str]
    operators: Mapping[str, str]
    relations: Mapping[str, str]
    field_functions: Mapping[str, str] | None = None

    def refusal(self, shape: ReadShape) -> str | None:
        """None when a READ shape uses only known, non-volatile functions and operators and plain
        relations; else why it may not run on a replica."""
        if shape.route != READ:
            return shape.reason
        for name in sorted(shape.functions):
            volatility = self.functions.get(name)
            if volatility is None:
                return f"unknown function {name}()"
            if volatility == "v":
                return f"calls volatile function {name}()"
        by_field = self.functions if self.field_functions is None else self.field_functions
        for name in sorted(shape.field_calls):  # t.f calls f(t) when t has no column f
            if by_field.get(name) == "v":
                return f"may call volatile function {name}() by field notation"
        for op in sorted(shape.operators):
            volatility = self.operators.get(op)
            if volatility is None:
                return f"unknown operator {op}"
            if volatility == "v":
                return f"uses operator {op}, whose function is volatile"
        for rel in sorted(shape.relations):
            mark = self.relations.get(rel)
            if mark is not None:
                return WHY.get(mark, "reads {}, which a replica cannot serve").format(rel)
        return None


def worst(pairs: Iterable[tuple[str, str]], order: str = "isv") -> dict[str, str]:
    """key -> the worst value of its pairs, by `order` (later is worse).

    >>> worst([("f", "i"), ("f", "v"), ("g", "s")])
    {'f': 'v', 'g': 's'}
    """
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in out or order.index(value) > order.index(out[key]):
            out[key] = value
    return out


def named(rows: Iterable[Any], value: str) -> list[tuple[str, str]]:
    """(name, value) and (schema.name, value) for catalog rows with nspname and a name in column 2."""
    out = []
    for row in rows:
        out += [(row[2], row[value]), (f"{row['nspname']}.{row[2]}", row[value])]
    return out


@dataclass(frozen=True, slots=True)
class Relation:
    """One relation of the catalog: its names, its own mark ('t', 'u' or None) and whether a view or policed."""

    names: tuple[str, str]
    own: str | None
    rewritten: bool


def relation_marks(
    relations: Mapping[int, Relation],
    uses: Mapping[int, list[tuple[str, int]]],
    volatile: frozenset[tuple[str, int]],
) -> dict[int, str]:
    """oid -> mark for every relation a replica should not read: its own persistence, else what its
    view rule or row security policies use (`volatile`: ("pg_proc" | "pg_operator", oid) of the
    volatile ones), followed through other views and tables (cycles stop).

    >>> rels = {1: Relation(("v1", "public.v1"), None, True), 2: Relation(("v2", "public.v2"), None, True),
    ...         3: Relation(("u", "public.u"), "u", False)}
    >>> relation_marks(rels, {1: [("pg_proc", 9)], 2: [("pg_class", 1)]}, frozenset({("pg_proc", 9)}))
    {1: 'v', 2: 'v', 3: 'u'}
    """
    memo: dict[int, str | None] = {}

    def mark(oid: int, path: frozenset[int]) -> str | None:
        if oid in memo:
            return memo[oid]
        rel = relations.get(oid)
        if rel is None or oid in path:
            return None
        found: str | None = rel.own
        if found is None:
            inner: list[str] = []
            for catalog, obj in uses.get(oid, ()):
                if (catalog, obj) in volatile:
                    inner.append("v")
                elif catalog == "pg_class":
                    used = mark(obj, path | {oid})
                    inner += ["w" if used in ("t", "u", "w") else "v"] if used else []
            if inner:
                found = "w" if "w" in inner else ("v" if rel.rewritten else "p")
        memo[oid] = found
        return found

    out = {}
    for oid in relations:
        m = mark(oid, frozenset())
        if m is not None:
            out[oid] = m
    return out


async def read_volatility(conn: asyncpg.Connection) -> Volatility:
    """Read the volatility of every function, operator and relation of `conn`'s database (a few catalog queries)."""
    async with conn.transaction(readonly=True):
        await conn.execute("set local search_path = pg_catalog")
        functions = await conn.fetch(_FUNCTIONS)
        operators = await conn.fetch(_OPERATORS)
        relation_rows = await conn.fetch(_RELATIONS)
        use_rows = await conn.fetch(_USES)
        definitions = await conn.fetch(_DEFINITIONS)
    calls = Volatility(worst(named(functions, "volatility")), worst(named(operators, "volatility")), {})
    relations = {
        r["oid"]: Relation(
            (r["relname"], f"{r['nspname']}.{r['relname']}"),
            r["relpersistence"] if r["relpersistence"] in ("t", "u") else None,
            r["relkind"] in ("v", "m"),
        )
        for r in relation_rows
    }
    uses: dict[int, list[tuple[str, int]]] = {}
    for u in use_rows:
        uses.setdefault(u["rel"], []).append((u["catalog"], u["obj"]))
    for d in definitions:  # a definition that is no plain read, or calls anything volatile or unknown
        if d["sql"] is not None and calls.refusal(read_shape(d["sql"])) is not None:
            uses.setdefault(d["rel"], []).append(VOLATILE_DEFINITION)
    volatile = (
        frozenset(("pg_proc", f["oid"]) for f in functions if f["volatility"] == "v")
        | frozenset(("pg_operator", o["oid"]) for o in operators if o["volatility"] == "v")
        | {VOLATILE_DEFINITION}
    )
    marks = relation_marks(relations, uses, volatile)
    pairs = [(name, m) for oid, m in marks.items() for name in relations[oid].names]
    one_argument = worst(named((f for f in functions if f["one_argument"]), "volatility"))
    return Volatility(calls.functions, calls.operators, worst(pairs, "".join(reversed(MARKS))), one_argument)


# Longer texts are judged every time rather than kept (the cache holds at most cap * this many characters).
MAX_CACHED_TEXT = 20_000


@dataclass(frozen=True, slots=True)
class Judgement:
    """Where a statement may run: route READ (a replica may serve it), WRITE (the primary) or SESSION."""

    route: str
    reason: str
    begins: str | None
    ends: bool


class ReadClassifier:
    """Judges statement texts against one Volatility snapshot, caching a bounded number of texts.

    `shape_key` maps a text to one that judges the same (the session layer gives `literal_key`,
    integer constants zeroed): a text is looked up as sent first, and only on a miss normalized,
    so a text sent again costs one dictionary lookup and each shape is parsed once.
    """

    def __init__(self, volatility: Volatility | None, cap: int = 10_000, shape_key: Callable[[str], str] = str) -> None:
        self.volatility = volatility
        self.cap = cap
        self.shape_key = shape_key
        self.cache: dict[str, Judgement] = {}

    def judge(self, sql: str) -> Judgement:
        """The judgement of `sql`; nothing is READ before the volatility was read."""
        hit = self.cache.get(sql)
        if hit is not None:
            return hit
        key = self.shape_key(sql)
        hit = self.cache.get(key) if key is not sql else None
        if hit is not None:
            return hit
        judgement = self.decide(read_shape(key))
        if len(key) > MAX_CACHED_TEXT:
            return judgement
        self.cache[key] = judgement
        while len(self.cache) > self.cap:
            del self.cache[next(iter(self.cache))]
        return judgement

    def decide(self, shape: ReadShape) -> Judgement:
        """A shape's judgement: a READ one stays READ only when the catalog finds nothing volatile in it."""
        if shape.route == READ:
            why = (
                "the catalog's volatility is not read yet"
                if self.volatility is None
                else self.volatility.refusal(shape)
            )
            if why is not None:
                return Judgement(WRITE, why, None, False)
        return Judgement(shape.route, shape.reason, shape.begins, shape.ends)
