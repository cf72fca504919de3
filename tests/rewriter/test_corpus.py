"""The ORM corpus (66,758 statements Django, SQLAlchemy and psycopg2 sent to PostgreSQL 15) through rewrite().

Policy for the run: every relation the corpus names is granted for every action;
half of them (by a hash of the name) are tenant-scoped with a masked column, the
others shared; every user-defined function it calls is listed. Then:
  - every statement gets Allow, Rewrite or Deny, never an exception;
  - no refusal is an internal failure (verify / rewrite / parse): only policy ones;
  - statements that touch no table data pass through as written;
  - each read-only Rewrite, with its projections put back as plain table names,
    parses (pglast) exactly as the client's statement did.
PGWARDEN_CORPUS_SAMPLE=N runs a deterministic sample of N statements instead.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from rewriter import Allow, Column, Context, Deny, MaskSpec, Rewrite, TableRule, classify, rewrite
from rewriter.classify import statements, walk_statement
from rewriter.masks import projection, quote_qualified
from rewriter.pg_names import BUILTIN_FUNCTIONS
from rewriter.verify import strip
from tests.fanout import fan_out

pytestmark = pytest.mark.slow  # the whole ORM corpus through the rewriter

CORPUS = Path(__file__).resolve().parents[1] / "data" / "orm_statements.jsonl.gz"
ALL = frozenset({"select", "insert", "update", "delete"})
COLUMNS = (Column("id", "integer"), Column("tenant_id", "text"), Column("secret", "text"))
POLICY_RULES = {"statements", "functions.allow", "catalogs", "tenancy.column"}
# NOTIFY is not among them: its channels are not tenant-scoped, so it is refused under a policy
# (psycopg2's own test suite sends the corpus's NOTIFYs; no ORM generates one).
PASS_KINDS = {
    "transaction",
    "savepoint",
    "fetch",
    "close",
    "listen",
    "unlisten",
    "discard",
    "deallocate",
    "set_constraints",
    "show",
}


def load() -> list[str]:
    with gzip.open(CORPUS, "rt") as f:
        sqls = [json.loads(line)["sql"] for line in f]
    sample = os.environ.get("PGWARDEN_CORPUS_SAMPLE")
    return random.Random(7).sample(sqls, min(int(sample), len(sqls))) if sample else sqls


def named(sql: str) -> tuple[set[str], set[str]]:
    """The relations and user-defined functions one statement names (as the policy would list them)."""
    rels: set[str] = set()
    funcs: set[str] = set()
    try:
        parsed = statements(sql)
    except Exception:
        return rels, funcs
    for kind, fields in parsed:
        found = walk_statement(kind, fields)
        rels.update(f"{r.rv.get('schemaname') or 'public'}.{r.rv['relname']}" for r in found.refs)
        funcs.update(
            ".".join(f) if len(f) == 2 else f"public.{f[0]}"
            for f in found.functions
            if len(f) == 2 or f[0] not in BUILTIN_FUNCTIONS
        )
    return rels, funcs


def names_and_functions(sqls: list[str]) -> tuple[set[str], set[str]]:
    """Every relation and user-defined function the corpus names."""
    rels, funcs = set(), set()
    for found_rels, found_funcs in fan_out(named, sqls):
        rels |= found_rels
        funcs |= found_funcs
    return rels, funcs


def judged(sql: str, ctx: Context) -> tuple[Allow | Rewrite | Deny, object]:
    """One statement's rewrite under the corpus policy, and its classification."""
    return rewrite(sql, ctx), classify(sql)


def corpus_context(rels: set[str], funcs: set[str]) -> Context:
    user = {n for n in rels if not n.startswith(("pg_catalog.", "information_schema."))}
    tenant = {n for n in user if zlib.crc32(n.encode()) % 2 == 0}
    rules = {
        n: TableRule(
            n, "tenant_id" if n in tenant else None, ALL, {"secret": MaskSpec("redact")} if n in tenant else {}
        )
        for n in user
    }
    return Context(rules, dict.fromkeys(tenant, COLUMNS), "acme", frozenset(funcs))


def _plain(node: object) -> object:
    """A location-free tree with RangeVars reduced to (relname, alias unless it repeats relname)
    and column references to their last two names."""
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "ColumnRef" in node and len(node) == 1:  # schema.table.column reads as table.column
        return {"ColumnRef": {"fields": node["ColumnRef"]["fields"][-2:]}}
    if "RangeVar" in node and len(node) == 1:
        rv = node["RangeVar"]
        alias = rv.get("alias")
        if alias and alias.get("aliasname") == rv["relname"] and not alias.get("colnames"):
            alias = None
        return {"RangeVar": {"relname": rv["relname"], "alias": alias, "inh": rv.get("inh")}}
    return {k: _plain(v) for k, v in node.items()}


def undo_projections(result: Rewrite, ctx: Context) -> str:
    """The rewritten text with each protected projection replaced by its table's qualified name."""
    sql = result.sql
    for name in result.tables:
        rule = ctx.tables[name]
        for only in (False, True):
            for fence in (False, True):
                text = projection(rule, ctx.schema[name], ctx.tenant, only=only, fence=fence)
                sql = sql.replace(text, ("ONLY " if only else "") + quote_qualified(name))
    return sql


@pytest.fixture(scope="module")
def corpus():
    sqls = load()
    ctx = corpus_context(*names_and_functions(sqls))
    results, kinds = zip(*fan_out(partial(judged, ctx=ctx), sqls))  # (two cores: tests/fanout.py)
    return sqls, ctx, list(results), list(kinds)


def test_every_statement_is_allowed_rewritten_or_refused_by_policy(corpus) -> None:
    sqls, _, results, _ = corpus
    kinds = Counter(type(r).__name__ for r in results)
    assert set(kinds) <= {"Allow", "Rewrite", "Deny"}
    bad = [
        (s, r)
        for s, r in zip(sqls, results)
        if isinstance(r, Deny)
        and r.rule not in POLICY_RULES
        and not r.message.startswith(("COPY FROM into tenant-scoped", "the column reference"))
    ]
    assert bad == [], bad[:5]
    assert kinds["Rewrite"] > len(sqls) // 10 and kinds["Allow"] > len(sqls) // 3


def test_statements_touching_no_table_data_pass_through(corpus) -> None:
    sqls, _, results, kinds = corpus
    checked = 0
    for sql, result, kind in zip(sqls, results, kinds):
        if kind.kind in PASS_KINDS:
            assert result == Allow(sql), (sql, result)
            checked += 1
    assert checked > 0


def test_two_phase_commit_is_refused(corpus) -> None:
    """A prepared transaction's gid is shared by every session: no policed client may name one."""
    sqls, _, results, kinds = corpus
    two_phase = [(sql, result) for sql, result, kind in zip(sqls, results, kinds) if kind.kind == "two_phase"]
    assert two_phase and all(isinstance(r, Deny) and r.sqlstate == "42501" for _, r in two_phase), two_phase[:3]


def test_side_channels_in_the_corpus_are_refused_and_nothing_is_too_complex(corpus) -> None:
    """EXPLAIN (Django's QuerySet.explain() in its test suite) is refused, a lone NOTIFY goes to the
    tenant's channel (rewriter/channels.py); no ORM statement reaches the complexity bounds (54001)."""
    sqls, _, results, kinds = corpus
    for sql, result, kind in zip(sqls, results, kinds):
        if kind.kind == "explain":
            assert isinstance(result, Deny) and result.message.startswith("EXPLAIN"), (sql, result)
        if kind.kind == "notify":
            scoped = isinstance(result, Rewrite) and result.sql.startswith("NOTIFY pgwarden_")
            assert scoped or (isinstance(result, Deny) and "NOTIFY" in result.message), (sql, result)
        assert not (isinstance(result, Deny) and result.sqlstate == "54001"), (sql[:200], result)


def parses_alike(pair: tuple[str, Rewrite], ctx: Context) -> bool:
    """Does the rewrite, its projections put back as plain table names, parse as the client's statement?"""
    sql, result = pair
    undone = undo_projections(result, ctx)
    before = [_plain(strip(f)) for _, f in statements(sql)]
    return '"tenant_id" = ' not in undone and [_plain(strip(f)) for _, f in statements(undone)] == before


def test_read_rewrites_parse_like_the_client_statement(corpus) -> None:
    sqls, ctx, results, kinds = corpus
    reads = [
        (sql, result)
        for sql, result, kind in zip(sqls, results, kinds)
        if isinstance(result, Rewrite) and not kind.writes and kind.kind not in ("copy_to", "notify")
    ]  # writes and COPY t TO change shape, NOTIFY its channel: verify() and the fixtures cover them
    alike = fan_out(partial(parses_alike, ctx=ctx), reads)  # (two cores: tests/fanout.py)
    assert reads and [(sql, r.sql) for (sql, r), same in zip(reads, alike) if not same] == []
