"""Read what PostgreSQL calls without being named from the live catalogs: user types and their
functions, casts with functions, default operator classes, user-typed columns and signatures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rewriter.catalog import FIRST_USER_OID, CastFacts, CatalogFacts, Routine, TypeFacts

U = FIRST_USER_OID

# Every type created after initdb, with the types it is built on.
_TYPES = f"""
select t.oid::int, n.nspname, t.typname, t.typelem::int, coalesce(rel.relkind in ('r', 'p', 'v', 'm', 'f'), false),
  array(
    select x::int from unnest(array[t.typelem, t.typbasetype]) x where x <> 0
    union select r.rngsubtype::int from pg_range r where r.rngtypid = t.oid
    union select r.rngtypid::int from pg_range r where r.rngmultitypid = t.oid
    union select a.atttypid::int from pg_attribute a
          where t.typrelid <> 0 and a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped)
from pg_type t join pg_namespace n on n.oid = t.typnamespace left join pg_class rel on rel.oid = t.typrelid
where t.oid >= {U}
"""

# The functions PostgreSQL calls for a user type: (type, type name, role, function oid, schema, name).
# Default operator classes count for btree and hash only (ORDER BY, GROUP BY, DISTINCT, comparisons);
# a default GiST or GIN class (btree_gist for built-in types, PostGIS) is used by the indexes an owner builds.
_TYPE_ROUTINES = f"""
with calls(typ, role, fn) as (
    select t.oid, f.role, f.fn from pg_type t cross join lateral (values
        ('input function', t.typinput), ('output function', t.typoutput),
        ('receive function', t.typreceive), ('send function', t.typsend),
        ('typmod input function', t.typmodin), ('typmod output function', t.typmodout),
        ('analyze function', t.typanalyze), ('subscript function', t.typsubscript)) f(role, fn)
    where t.oid >= {U}
  union all
    select r.rngtypid, f.role, f.fn from pg_range r cross join lateral (values
        ('canonical function', r.rngcanonical), ('subtype_diff function', r.rngsubdiff)) f(role, fn)
    where r.rngtypid >= {U}
  union all
    select r.rngtypid, 'subtype operator class function', ap.amproc
    from pg_range r join pg_opclass oc on oc.oid = r.rngsubopc join pg_amproc ap on ap.amprocfamily = oc.opcfamily
    where r.rngtypid >= {U}
  union all
    select c.contypid, 'constraint ' || c.conname || ' function', coalesce(o.oprcode, d.refobjid)
    from pg_constraint c join pg_depend d on d.classid = 'pg_constraint'::regclass and d.objid = c.oid
    left join pg_operator o on d.refclassid = 'pg_operator'::regclass and o.oid = d.refobjid
    where c.contypid >= {U} and d.refclassid in ('pg_proc'::regclass, 'pg_operator'::regclass)
  union all
    select d.objid, 'default or dependent function', coalesce(o.oprcode, d.refobjid)
    from pg_depend d left join pg_operator o on d.refclassid = 'pg_operator'::regclass and o.oid = d.refobjid
    where d.classid = 'pg_type'::regclass and d.objid >= {U}
      and d.refclassid in ('pg_proc'::regclass, 'pg_operator'::regclass)
  union all
    select oc.opcintype, 'default ' || am.amname || ' operator class function', f.fn
    from pg_opclass oc join pg_am am on am.oid = oc.opcmethod
    join (select amprocfamily, amproc::oid from pg_amproc
          union all select a.amopfamily, o.oprcode from pg_amop a join pg_operator o on o.oid = a.amopopr)
         f(family, fn) on f.family = oc.opcfamily
    where oc.opcdefault and am.amname in ('btree', 'hash') and (oc.opcintype >= {U} or f.fn >= {U})
)
select c.typ::int, format_type(c.typ, null), c.role, p.oid::int, n.nspname, p.proname
from calls c join pg_proc p on p.oid = c.fn join pg_namespace n on n.oid = p.pronamespace
where c.fn <> 0
"""

# Casts made after initdb or calling a function made after it.
_CASTS = f"""
select c.castsource::int, c.casttarget::int, sn.nspname || '.' || s.typname, tn.nspname || '.' || t.typname,
       c.castcontext::text, p.oid::int, n.nspname, p.proname
from pg_cast c join pg_proc p on p.oid = c.castfunc join pg_namespace n on n.oid = p.pronamespace
join pg_type s on s.oid = c.castsource join pg_namespace sn on sn.oid = s.typnamespace
join pg_type t on t.oid = c.casttarget join pg_namespace tn on tn.oid = t.typnamespace
where c.oid >= {U} or p.oid >= {U}
"""

_COLUMNS = f"""
select n.nspname || '.' || c.relname, a.attname, a.atttypid::int
from pg_class c join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
where c.relkind in ('r', 'p', 'v', 'm', 'f') and a.atttypid >= {U}
"""

_SIGNATURES = f"""
select n.nspname || '.' || p.proname, array(select unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))::int
                                            union select p.prorettype::int)
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where p.oid >= {U}
"""

_BUILTIN_TYPES = f"select typname from pg_type where typnamespace = 'pg_catalog'::regnamespace and oid < {U}"


Row = Sequence[Any]
"""One row of the queries above: an asyncpg Record, or a plain tuple in tests."""


async def read_catalog(conn: Any, timeout: float) -> CatalogFacts:
    """The facts of one database (an asyncpg connection to it)."""
    types = await conn.fetch(_TYPES, timeout=timeout)
    routines = await conn.fetch(_TYPE_ROUTINES, timeout=timeout)
    casts = await conn.fetch(_CASTS, timeout=timeout)
    columns = await conn.fetch(_COLUMNS, timeout=timeout)
    signatures = await conn.fetch(_SIGNATURES, timeout=timeout)
    builtin = await conn.fetch(_BUILTIN_TYPES, timeout=timeout)
    return catalog_facts(types, routines, casts, columns, signatures, [r[0] for r in builtin])


def catalog_facts(
    types: Iterable[Row],
    routines: Iterable[Row],
    casts: Iterable[Row],
    columns: Iterable[Row],
    signatures: Iterable[Row],
    builtin_types: Iterable[str],
) -> CatalogFacts:
    """CatalogFacts from the rows of the queries above (plain tuples work too).

    >>> f = catalog_facts([(20000, "public", "tref", 0, False, [])], [(20000, "tref", "input function", 20001, "public",
    ...     "tin"),
    ...     (25, "text", "default btree operator class function", 20002, "public", "cmp")], [], [("public.t", "r", 20000)],
    ...     [("public.f", [20000, 25])], ["text"])
    >>> [r.qualified for r in f.types[20000].routines], f.builtin_opclasses[0][0], f.columns
    (['public.tin'], 'text btree', {'public.t': (('r', 20000),)})
    """
    own: dict[int, list[Routine]] = {}
    builtin_opclasses: list[tuple[str, Routine]] = []
    for typ, type_name, role, oid, nsp, name in routines:
        if typ >= FIRST_USER_OID:
            own.setdefault(typ, []).append(Routine(oid, nsp, name, role))
        else:  # a built-in type's default operator class with a user function
            builtin_opclasses.append((f"{type_name} {role.split()[1]}", Routine(oid, nsp, name)))
    facts_types = {
        oid: TypeFacts(oid, f"{nsp}.{name}", elem, tuple(parts or ()), tuple(own.get(oid, ())), rel)
        for oid, nsp, name, elem, rel, parts in types
    }
    cols: dict[str, list[tuple[str, int]]] = {}
    for rel, col, typ in columns:
        cols.setdefault(rel, []).append((col, typ))
    sigs: dict[str, set[int]] = {}
    for fn, typs in signatures:
        sigs.setdefault(fn, set()).update(t for t in typs or () if t >= FIRST_USER_OID)
    return CatalogFacts(
        facts_types,
        tuple(CastFacts(s, t, sn, tn, ctx, Routine(o, n, p)) for s, t, sn, tn, ctx, o, n, p in casts),
        tuple(builtin_opclasses),
        {r: tuple(c) for r, c in cols.items()},
        {fn: frozenset(t) for fn, t in sigs.items() if t},
        frozenset(f"pg_catalog.{n}" for n in builtin_types),
    )
