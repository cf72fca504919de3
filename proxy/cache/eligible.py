"""Which statements' answers may be cached: the parse (rewriter.cacheable) judged against the listed tables and the catalog."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from rewriter.cacheable import cache_shape
from rewriter.readonly import READ

# The listed tables as the catalog has them: a reason for each that cannot be cached, else absent.
TABLES_SQL = """
select n.nspname || '.' || c.relname as name, c.relkind::text as kind, c.relpersistence::text as persistence,
  c.relrowsecurity as row_security, c.relhassubclass as children,
  (select count(*) from pg_class o where o.relname = c.relname and o.relkind in ('r', 'p', 'v', 'm', 'f')) as same_name
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname || '.' || c.relname = any($1::text[])
"""


class Calls(Protocol):
    """What the catalog says of functions and operators (proxy.routing.volatility.Volatility)."""

    @property
    def functions(self) -> Mapping[str, str]: ...
    @property
    def operators(self) -> Mapping[str, str]: ...


def table_problem(row: Mapping[str, object]) -> str | None:
    """Why a listed table (a row of TABLES_SQL) cannot be cached, or None."""
    name = row["name"]
    if row["kind"] != "r":
        return f"{name} is not a plain table (relkind {row['kind']})"
    if row["persistence"] != "p":
        return f"{name} is unlogged or temporary: its writes are not in the WAL"
    if row["row_security"]:
        return f"{name} has row level security: its answer may depend on other tables"
    if row["children"]:
        return f"{name} has inheritance children"
    if int(str(row["same_name"])) != 1:
        return f"another relation is also named {str(name).partition('.')[2]}"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A statement's eligibility: the table names whose versions key its answer, or why it is not cached."""

    tables: tuple[str, ...] | None
    reason: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """One database's facts: the listed tables that may be cached (by schema.table), the rest with a
    reason, and the volatility of functions and operators (None until read: nothing is eligible)."""

    usable: frozenset[str]
    problems: Mapping[str, str]
    calls: Calls | None


def judge(sql: str, catalog: Catalog, stable_ok: bool) -> Verdict:
    """Whether `sql`'s answer may be cached under `catalog`; its tables' names (without schema) if so.

    A relation written without schema matches a listed table of that name (table_problem makes sure
    no other relation has it); a qualified one must be listed as written.
    """
    shape = cache_shape(sql)
    if shape.route != READ:
        return Verdict(None, shape.reason)
    calls = catalog.calls
    if calls is None:
        return Verdict(None, "the catalog is not read yet")
    allowed = ("i", "s") if stable_ok else ("i",)
    for name in sorted(shape.functions):
        volatility = calls.functions.get(name)
        if volatility not in allowed:
            what = {None: "unknown", "s": "stable", "v": "volatile"}.get(volatility, volatility)
            return Verdict(None, f"calls {what} function {name}()")
    for name in sorted(shape.field_calls):  # t.f may call f(t)
        if calls.functions.get(name, "i") not in allowed:
            return Verdict(None, f"may call function {name}() by field notation")
    for op in sorted(shape.operators):  # (stable ones depend on settings such as TimeZone, which key the answer)
        if calls.operators.get(op) not in ("i", "s"):
            return Verdict(None, f"uses operator {op}, whose function is volatile or unknown")
    if not shape.relations:
        return Verdict(None, "reads no table")
    tables = []
    for rel in sorted(shape.relations):
        qualified = rel if "." in rel else next((u for u in catalog.usable if u.partition(".")[2] == rel), None)
        if qualified is None or qualified not in catalog.usable:
            problem = catalog.problems.get(qualified or "") if qualified else None
            return Verdict(None, problem or f"reads {rel}, which is not in cache.tables")
        tables.append(qualified.partition(".")[2])
    return Verdict(tuple(sorted(set(tables))), "cacheable")


class Judge:
    """`judge` per text, cached (bounded) for one Catalog snapshot. `shape_key` maps a text to one judged
    the same (the session gives integer constants zeroed), so each shape is parsed once."""

    def __init__(
        self, catalog: Catalog, stable_ok: bool, cap: int = 10_000, shape_key: Callable[[str], str] = str
    ) -> None:
        self.catalog, self.stable_ok, self.cap, self.shape_key = catalog, stable_ok, cap, shape_key
        self._seen: dict[str, Verdict] = {}

    def __call__(self, sql: str) -> Verdict:
        verdict = self._seen.get(sql)
        if verdict is not None:
            return verdict
        key = self.shape_key(sql)
        verdict = self._seen.get(key)
        if verdict is None:
            verdict = judge(key, self.catalog, self.stable_ok)
            if len(self._seen) >= self.cap:
                self._seen.clear()
            if len(key) <= 20_000:
                self._seen[key] = verdict
        return verdict
