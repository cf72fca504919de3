"""What the rewriter is told about one session: its table rules, the live schema, its tenant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .catalog import CatalogFacts, ImplicitRisks
from .pgparser import PARSER_MAJOR

MASK_KINDS = frozenset({"redact", "null", "email", "partial", "hash", "year", "round", "constant"})


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """One column mask: `kind` from MASK_KINDS, `options` as sorted (name, value) pairs.

    Options per kind: partial(keep_first, keep_last), hash(salt: the resolved salt),
    round(digits), constant(value); the others take none.
    """

    kind: str
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {self.kind!r}")

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)


@dataclass(frozen=True, slots=True)
class TableRule:
    """The policy for one table (or view) as it applies to this session's identity.

    `name` is "schema.table"; `tenant_column` None means a shared table; `actions` is
    the subset of select/insert/update/delete granted; `masks` maps column -> MaskSpec
    for the masks that apply to this identity's roles.
    """

    name: str
    tenant_column: str | None
    actions: frozenset[str]
    masks: Mapping[str, MaskSpec] = field(default_factory=dict)

    @property
    def protected(self) -> bool:
        """True when reads of this table go through a substituted subquery."""
        return self.tenant_column is not None or bool(self.masks)


@dataclass(frozen=True, slots=True)
class Column:
    """A live column: `type` is PostgreSQL's `format_type(atttypid, atttypmod)` text."""

    name: str
    type: str


Schema = Mapping[str, tuple[Column, ...]]
""""schema.relation" -> its columns in table order; views are included by name."""


@dataclass(frozen=True, slots=True)
class UserRoutines:
    """Functions and operators the live database defines outside pg_catalog and information_schema.

    `functions` holds "schema.name"; `operators` maps "schema.symbol" to the "schema.name"
    of the functions that implement it ("" for a shell operator without one); `catalog` holds
    what PostgreSQL calls without a name (casts, type functions, domain checks, operator classes).
    """

    functions: frozenset[str] = frozenset()
    operators: Mapping[str, frozenset[str]] = field(default_factory=dict)
    catalog: CatalogFacts = CatalogFacts()  # noqa: RUF009 (frozen: one shared empty value)


@dataclass(frozen=True, slots=True)
class Context:
    """A non-bypass session: what it may touch and as which tenant.

    `denied_relations` adds "schema.relation" names to the rewriter's own list of
    sensitive catalogs; `search_path` is the session's, without "$user";
    `routines` are the live database's own functions and operators (none offline);
    `implicit` the types, casts, columns and functions that would call unallowed functions unnamed.
    `server_major` is the backend's PostgreSQL major: statements are judged as its grammar
    reads them (rewriter/server_grammar.py; the parser's own major when unknown, offline).
    """

    tables: Mapping[str, TableRule]
    schema: Schema
    tenant: str | None
    allowed_functions: frozenset[str] = frozenset()
    search_path: tuple[str, ...] = ("public",)
    denied_relations: frozenset[str] = frozenset()
    routines: UserRoutines = UserRoutines()
    implicit: ImplicitRisks = ImplicitRisks()  # noqa: RUF009 (frozen: one shared empty value)
    server_major: int = PARSER_MAJOR

    @property
    def session_tenant(self) -> str:
        """`tenant`, where a tenant-scoped table is used (resolve refuses those when the session has none)."""
        assert self.tenant is not None, "a tenant-scoped table needs a tenant"
        return self.tenant
