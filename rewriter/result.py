"""The rewriter's answers: Allow, Rewrite or Deny for a statement; Kind for routing and audit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the client's original text unchanged."""

    sql: str


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Forward `sql` instead of the client's text.

    `tables`: protected tables the statement touches (schema-qualified);
    `masked`: "schema.table.column" masks applied;
    `param_checks`: (1-based parameter number, value it must equal at every Bind).
    """

    sql: str
    tables: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()
    param_checks: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse with SQLSTATE 42501: what and why (`message`), what to change (`hint`), which `rule`."""

    message: str
    hint: str
    rule: str
    sqlstate: str = "42501"


Result = Allow | Rewrite | Deny


@dataclass(frozen=True, slots=True)
class Kind:
    """What PostgreSQL's parser says a message is.

    `kind`: select, insert, update, delete, merge, copy_to, copy_from, transaction,
    savepoint, two_phase, set, reset, show, listen, unlisten, notify, fetch, close,
    declare, explain, prepare, execute, deallocate, discard, set_constraints, call,
    lock, truncate, do, grant, ddl, other; "multi" for several statements (see `parts`);
    "empty" for no statement; "invalid" when it does not parse.
    `reads`/`writes`: relations as resolved by name only (search_path's first schema,
    pg_catalog for catalog names). `setting`: the name a SET/RESET/SHOW acts on, and
    `values` the literal values a SET gives it (e.g. the schemas of `SET search_path`).
    `functions`: every function called, as written; `locks`: a FOR UPDATE/SHARE clause.
    """

    kind: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    setting: str | None = None
    parts: tuple[Kind, ...] = ()
    functions: tuple[str, ...] = ()
    locks: bool = False
    values: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        """True when only reads are involved: no writes, no row locks, only read kinds.

        (Functions with side effects, e.g. nextval(), are the caller's to judge from `functions`.)
        """
        parts = self.parts or (self,)
        return (
            not self.writes
            and not any(p.locks for p in parts)
            and all(p.kind in ("select", "show", "explain", "copy_to", "fetch") for p in parts)
        )
