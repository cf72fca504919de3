"""Which types, casts, columns and functions of a database make PostgreSQL call a function that
functions.allow does not list, without the statement naming it (computed once per schema read)."""

from __future__ import annotations

from collections.abc import Iterable

from .catalog import (
    FIRST_USER_OID,
    CastFacts,
    CatalogFacts,
    ImplicitRisks,
    RelationRisk,
    Risk,
    Routine,
    TypeFacts,
)
from .resolve import dangerous

__all__ = ["CastFacts", "TypeFacts", "implicit_risks", "routine_allowed"]


def routine_allowed(routine: Routine, allowed: frozenset[str]) -> bool:
    """A built-in that only computes, or a function functions.allow lists.

    >>> routine_allowed(Routine(1, "pg_catalog", "textin"), frozenset())
    True
    >>> routine_allowed(Routine(20001, "public", "leak"), frozenset()), routine_allowed(
    ...     Routine(20001, "public", "leak"), frozenset({"public.leak"}))
    (False, True)
    """
    if routine.oid < FIRST_USER_OID and routine.schema == "pg_catalog":
        return not dangerous(routine.name)
    return routine.qualified in allowed


def _unallowed(routines: Iterable[Routine], allowed: frozenset[str]) -> Risk | None:
    bad = [r for r in routines if not routine_allowed(r, allowed)]
    return _risk(bad) if bad else None


def _risk(bad: list[Routine]) -> Risk:
    """The Risk of routines PostgreSQL would call unnamed that are not allowed."""
    by_role: dict[str, list[str]] = {}
    for r in bad:
        by_role.setdefault(r.role, []).append(f"{r.qualified}()")
    shown = "; ".join(
        f"{', '.join(dict.fromkeys(fns))}" + (f" as its {role}" if role else "") for role, fns in by_role.items()
    )
    return Risk(
        f"PostgreSQL would call {shown} without the statement naming it, and that is no safe built-in "
        "nor listed in functions.allow",
        tuple(dict.fromkeys(r.qualified for r in bad)),
    )


def cast_routines(
    facts: CatalogFacts, allowed: frozenset[str]
) -> tuple[dict[int, list[Routine]], dict[int, Risk], Risk | None]:
    """Unallowed cast functions that make a user type unsafe in any use (it is their source, or the
    target of an assignment or implicit cast), explicit-only targets, and casts between built-ins
    that PostgreSQL may apply anywhere (a superuser made them: no statement is safe)."""
    direct: dict[int, list[Routine]] = {}
    targets: dict[int, Risk] = {}
    everywhere = None
    for cast in facts.casts:
        if routine_allowed(cast.routine, allowed):
            continue
        context = {"e": "explicit", "a": "assignment", "i": "implicit"}.get(cast.context, cast.context)
        role = f"{context} cast from {cast.source_name} to {cast.target_name}"
        routine = Routine(cast.routine.oid, cast.routine.schema, cast.routine.name, role)
        if cast.source >= FIRST_USER_OID:
            direct.setdefault(cast.source, []).append(routine)
        if cast.target >= FIRST_USER_OID and cast.context != "e":
            direct.setdefault(cast.target, []).append(routine)
        if cast.source < FIRST_USER_OID and cast.context == "e":
            targets[cast.target] = _risk([routine])  # not allowed: skipped above otherwise
        elif cast.source < FIRST_USER_OID and cast.target < FIRST_USER_OID and everywhere is None:
            everywhere = _risk([routine])
    return direct, targets, everywhere


def type_risks(facts: CatalogFacts, allowed: frozenset[str], direct: dict[int, list[Routine]]) -> dict[int, Risk]:
    """Risk of every unsafe user type: its own unallowed functions, or a type it is built on."""
    memo: dict[int, Risk | None] = {}

    def risk(oid: int) -> Risk | None:
        if oid in memo:
            return memo[oid]
        memo[oid] = None  # a type reached again while it is judged adds nothing
        t = facts.types.get(oid)
        if t is None:
            return None
        found = _unallowed((*t.routines, *direct.get(oid, ())), allowed)
        for part in t.parts if found is None else ():
            if (inner := risk(part)) is not None:
                found = Risk(f"it is built on type {facts.types[part].name}, and {inner.why}", inner.functions)
                break
        memo[oid] = found
        return found

    return {oid: r for oid in facts.types if (r := risk(oid)) is not None}


def implicit_risks(facts: CatalogFacts, allowed: frozenset[str]) -> ImplicitRisks:
    """Everything unsafe in one database under `allowed` (computed once per schema read and policy).

    >>> f = CatalogFacts(types={20000: TypeFacts(20000, "public.tref"), 20001: TypeFacts(20001, "public._tref",
    ...     20000, (20000,))}, casts=(CastFacts(25, 20000, "text", "public.tref", "e",
    ...     Routine(20002, "public", "leak")),), columns={"public.t": (("r", 20001), ("n", 25))})
    >>> r = implicit_risks(f, frozenset())
    >>> sorted(r.cast_targets), sorted(r.types), dict(r.relations)
    (['public._tref', 'public.tref'], [], {})
    >>> implicit_risks(f, frozenset({"public.leak"})).cast_targets
    {}
    """
    direct, targets, everywhere = cast_routines(facts, allowed)
    for oid, t in facts.types.items():  # an array of an explicit cast's target is cast element by element
        if t.element in targets and oid not in targets:
            targets[oid] = targets[t.element]
    for name, routine in facts.builtin_opclasses:
        if everywhere is None and not routine_allowed(routine, allowed):
            everywhere = Risk(
                f"the default {name} operator class calls {routine.qualified}(), which is no "
                "safe built-in and not in functions.allow",
                (routine.qualified,),
            )
    risky = type_risks(facts, allowed, direct)
    names = {oid: name for c in facts.casts for oid, name in ((c.source, c.source_name), (c.target, c.target_name))}
    names |= {oid: t.name for oid, t in facts.types.items()}

    def name_of(oid: int) -> str:
        return names.get(oid, str(oid))

    rows = {facts.types[oid].name: r for oid, r in risky.items() if facts.types[oid].relation}
    relations = {rel: RelationRisk({}, row) for rel, row in rows.items()}
    for rel, cols in facts.columns.items():
        bad = {
            col: Risk(f"its type {name_of(typ)} is unsafe: {risky[typ].why}", risky[typ].functions)
            for col, typ in cols
            if typ in risky
        }
        if bad:
            relations[rel] = RelationRisk(bad, rows.get(rel) or next(iter(bad.values())))
    functions: dict[str, Risk] = {}
    for fn, types in facts.signatures.items():
        if fn in allowed and (hit := next((t for t in sorted(types) if t in risky), None)) is not None:
            functions[fn] = Risk(f"it takes or returns type {name_of(hit)}, and {risky[hit].why}", risky[hit].functions)
    return ImplicitRisks(
        {name_of(o): r for o, r in risky.items()},
        {name_of(o): r for o, r in targets.items()},
        relations,
        functions,
        {o: name_of(o) for o in risky},
        frozenset(t.name for t in facts.types.values()) | facts.builtin_types,
        everywhere,
    )
