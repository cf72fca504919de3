"""Why the rewriter does not use sqlglot: its parse failures and regeneration changes over the ORM corpus.

    .venv/bin/pip install sqlglot && .venv/bin/python bench/sqlglot_corpus.py [--sample N]

Every statement of tests/data/orm_statements.jsonl.gz that PostgreSQL's own parser
(libpg_query, what pgwarden uses) accepts is read by sqlglot's postgres dialect and
written back out. A statement counts as
- `raises`: sqlglot cannot parse it;
- `command`: sqlglot parses it only as an opaque `Command` (it does not understand it);
- `unparsable`: PostgreSQL's parser rejects sqlglot's regenerated text;
- `changed`: PostgreSQL's parse tree of the regenerated text differs from the original's
  (locations aside): a rewriter built on sqlglot would send PostgreSQL another statement;
- `same`: the trees are equal.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import logging
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewriter.classify import statements
from rewriter.verify import strip

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "orm_statements.jsonl.gz"


def postgres_tree(sql: str) -> object | None:
    try:
        return strip([[kind, fields] for kind, fields in statements(sql)])
    except Exception:
        return None


def judge(sql: str, original: object) -> str:
    import sqlglot
    from sqlglot import exp

    try:
        parsed = sqlglot.parse(sql, read="postgres")
    except Exception:
        return "raises"
    if any(isinstance(e, exp.Command) for e in parsed if e is not None):
        return "command"
    try:
        regenerated = ";\n".join(e.sql(dialect="postgres") for e in parsed if e is not None)
    except Exception:
        return "raises"
    tree = postgres_tree(regenerated)
    if tree is None:
        return "unparsable"
    return "same" if tree == original else "changed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=0, help="judge a random sample of this size")
    ap.add_argument("--examples", type=int, default=3, help="statements to print per outcome")
    args = ap.parse_args()
    logging.getLogger("sqlglot").setLevel(logging.CRITICAL)  # it logs every fallback to Command
    sqls = [json.loads(line)["sql"] for line in gzip.open(CORPUS, "rt")]
    if args.sample:
        sqls = random.Random(7).sample(sqls, args.sample)
    outcomes: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for sql in sqls:
        original = postgres_tree(sql)
        outcome = "postgres rejects" if original is None else judge(sql, original)
        outcomes[outcome] += 1
        if len(examples[outcome]) < args.examples:
            examples[outcome].append(" ".join(sql.split())[:160])
    judged = len(sqls) - outcomes["postgres rejects"]
    import sqlglot

    print(f"sqlglot {sqlglot.__version__}, {len(sqls)} statements, {judged} accepted by PostgreSQL's parser")
    for outcome in ("raises", "command", "unparsable", "changed", "same", "postgres rejects"):
        share = outcomes[outcome] / judged * 100 if judged and outcome != "postgres rejects" else 0.0
        print(f"{outcome:>17}: {outcomes[outcome]:6d}  {share:5.1f}%")
    for outcome in ("raises", "command", "unparsable", "changed"):
        for sql in examples[outcome]:
            print(f"  {outcome}: {sql}")


if __name__ == "__main__":
    main()
