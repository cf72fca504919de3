"""Rewrite cost per statement, cold, over a sample of the ORM corpus: p50/p95/p99 by outcome.

    .venv/bin/python bench/rewrite_bench.py [--sample N] [--seed S]

"Cold" means no rewrite cache and the rewriter's fragment cache cleared before
each statement, as for a statement text pgwarden has never seen. The policy is
the corpus test's: every relation granted, half of them tenant-scoped and masked.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewriter import Column, Context, MaskSpec, TableRule, rewrite
from rewriter.classify import statements, walk_statement
from rewriter.pg_names import BUILTIN_FUNCTIONS
from rewriter.verify import fragment_tree

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "orm_statements.jsonl.gz"
ALL = frozenset({"select", "insert", "update", "delete"})
COLUMNS = (Column("id", "integer"), Column("tenant_id", "text"), Column("secret", "text"))


def policy(sqls: list[str]) -> Context:
    """Every relation the statements name granted; half tenant-scoped with a masked column."""
    rels, funcs = set(), set()
    for sql in sqls:
        try:
            parsed = statements(sql)
        except Exception:
            continue
        for kind, fields in parsed:
            found = walk_statement(kind, fields)
            rels.update(f"{r.rv.get('schemaname') or 'public'}.{r.rv['relname']}" for r in found.refs)
            funcs.update(
                ".".join(f) if len(f) == 2 else f"public.{f[0]}"
                for f in found.functions
                if len(f) == 2 or f[0] not in BUILTIN_FUNCTIONS
            )
    user = {n for n in rels if not n.startswith(("pg_catalog.", "information_schema."))}
    tenant = {n for n in user if zlib.crc32(n.encode()) % 2 == 0}
    rules = {
        n: TableRule(
            n, "tenant_id" if n in tenant else None, ALL, {"secret": MaskSpec("redact")} if n in tenant else {}
        )
        for n in user
    }
    return Context(rules, dict.fromkeys(tenant, COLUMNS), "acme", frozenset(funcs))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with gzip.open(CORPUS, "rt") as f:
        sqls = [json.loads(line)["sql"] for line in f]
    sample = random.Random(args.seed).sample(sqls, min(args.sample, len(sqls)))
    ctx = policy(sample)
    timings: dict[str, list[float]] = {}
    for sql in sample:
        fragment_tree.cache_clear()
        start = time.perf_counter()
        result = rewrite(sql, ctx)
        elapsed = (time.perf_counter() - start) * 1e6
        timings.setdefault(type(result).__name__, []).append(elapsed)
        timings.setdefault("all", []).append(elapsed)
    print(f"rewrite(), cold, {len(sample)} ORM statements (seed {args.seed}); microseconds")
    print(f"{'outcome':<10}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    for name in ("Allow", "Rewrite", "Deny", "all"):
        values = timings.get(name, [])
        if values:
            print(
                f"{name:<10}{len(values):>8}{percentile(values, 50):>10.0f}{percentile(values, 95):>10.0f}"
                f"{percentile(values, 99):>10.0f}{statistics.fmean(values):>10.0f}"
            )


if __name__ == "__main__":
    main()
