"""Records of the functions PostgreSQL calls without being named (casts, type I/O, domain checks,
operator classes): the live catalog's facts, and the unsafe names they make."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# PostgreSQL's FirstNormalObjectId: every object initdb creates has a lower OID.
FIRST_USER_OID = 16384


@dataclass(frozen=True, slots=True)
class Routine:
    """A function PostgreSQL may call implicitly, and in what capacity ("input function", ...)."""

    oid: int
    schema: str
    name: str
    role: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class TypeFacts:
    """A type created after initdb: its name, element type, the types it is built on and its functions."""

    oid: int
    name: str  # "schema.typname"
    element: int = 0
    parts: tuple[int, ...] = ()  # element, domain base, range subtype, multirange's range, attributes
    routines: tuple[Routine, ...] = ()
    relation: bool = False  # the row type of a table, view or foreign table of the same name


@dataclass(frozen=True, slots=True)
class CastFacts:
    """A cast with a function: context e (explicit), a (assignment) or i (implicit)."""

    source: int
    target: int
    source_name: str
    target_name: str
    context: str
    routine: Routine


@dataclass(frozen=True, slots=True)
class CatalogFacts:
    """What one schema read found: user types, casts with functions, default operator classes with
    user functions for built-in types, user-typed columns and the types user functions take or return."""

    types: Mapping[int, TypeFacts] = field(default_factory=dict)
    casts: tuple[CastFacts, ...] = ()
    builtin_opclasses: tuple[tuple[str, Routine], ...] = ()  # ("pg_catalog.text btree", function)
    columns: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # relation -> (col, type)
    signatures: Mapping[str, frozenset[int]] = field(default_factory=dict)  # "schema.function" -> type oids
    builtin_types: frozenset[str] = frozenset()  # "pg_catalog.typname" for name resolution


@dataclass(frozen=True, slots=True)
class Risk:
    """Why a type, cast, column or function is refused, and the functions to review and allow."""

    why: str
    functions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RelationRisk:
    """A relation whose columns (or whole rows) PostgreSQL would pass through unsafe functions."""

    columns: Mapping[str, Risk]
    row: Risk | None


@dataclass(frozen=True, slots=True)
class ImplicitRisks:
    """The unsafe names of one database under one functions.allow, computed once per schema read.

    `types`: "schema.name" -> Risk for any use of the type; `cast_targets`: types an explicit
    cast to which runs an unallowed function; `known_types`: every type name, to resolve an
    unqualified one along the search_path; `everywhere`: a Risk no statement escapes.
    """

    types: Mapping[str, Risk] = field(default_factory=dict)
    cast_targets: Mapping[str, Risk] = field(default_factory=dict)
    relations: Mapping[str, RelationRisk] = field(default_factory=dict)
    functions: Mapping[str, Risk] = field(default_factory=dict)
    type_oids: Mapping[int, str] = field(default_factory=dict)  # the oids of `types`
    known_types: frozenset[str] = frozenset()
    everywhere: Risk | None = None
