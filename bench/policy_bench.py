"""Policy cost: rewrite time (cold and cached) and pgbench on a tenant-scoped table, pgwarden vs PgBouncer."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
from common import Load, Target, run_pgbench  # noqa: E402

from proxy.enforce.router import Router  # noqa: E402
from rewriter.context import Column  # noqa: E402

TENANTS = 10
ROWS_PER_TENANT = 2000

SCHEMA = f"""
create table customers (id int primary key, tenant_id text not null, name text, email text,
                        ssn text, phone text);
create index on customers (tenant_id);
create table orders (id int primary key, tenant_id text not null, customer_id int, total numeric);
insert into customers select i, 't' || (i % {TENANTS}), 'name ' || i, 'user' || i || '@x.io',
  lpad(i::text, 9, '0'), '555-' || i from generate_series(1, {TENANTS * ROWS_PER_TENANT}) i;
insert into orders select i, 't' || (i % {TENANTS}), i, i from generate_series(1, {TENANTS * ROWS_PER_TENANT}) i;
create role app_t0 login; grant select, insert, update, delete on customers, orders to app_t0;
analyze;
"""

POLICY = """
version: 1
tenancy:
  column: tenant_id
  sources: [{users: {app_t0: t0}}]
roles:
  app: {users: [app_t0]}
tables:
  public.customers:
    grants: {app: [select, insert, update, delete]}
    masks: {ssn: {mask: redact, roles: [app]}}
  public.orders:
    grants: {app: [select, insert, update, delete]}
"""

SCRIPT = f"""\\set id random(1, {TENANTS * ROWS_PER_TENANT})
SELECT id, name, email, ssn FROM customers WHERE id = :id;
"""

STATEMENTS = [
    "SELECT id, name FROM customers WHERE id = $1",
    'SELECT "customers"."id", "customers"."name", "customers"."email" FROM "customers" '
    'WHERE "customers"."email" = $1 LIMIT 21',
    "SELECT c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.total > $1",
    "SELECT count(*) FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE name LIKE $1)",
    "UPDATE orders SET total = $1 WHERE id = $2",
    "DELETE FROM orders WHERE id = $1",
    "INSERT INTO orders (id, customer_id, total) VALUES ($1, $2, $3) RETURNING id",
    "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
    "WITH big AS (SELECT customer_id, sum(total) s FROM orders GROUP BY 1) "
    "SELECT c.name, big.s FROM customers c JOIN big ON big.customer_id = c.id ORDER BY big.s DESC LIMIT 10",
    "SAVEPOINT s1",
    "RELEASE SAVEPOINT s1",
    "BEGIN",
    "COMMIT",
    "SELECT 1",
]


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50_us": round(q[49] * 1e6, 1), "p95_us": round(q[94] * 1e6, 1), "p99_us": round(q[98] * 1e6, 1)}


def rewrite_costs(tmp: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Router.decide per statement: cold (empty cache) and cached (the proxy's hit path)."""
    from proxy.enforce.router import load_router

    (tmp / "policy.yaml").write_text(POLICY)
    schema = {
        "public.customers": tuple(
            Column(n, t)
            for n, t in (
                ("id", "integer"),
                ("tenant_id", "text"),
                ("name", "text"),
                ("email", "text"),
                ("ssn", "text"),
                ("phone", "text"),
            )
        ),
        "public.orders": tuple(
            Column(n, t)
            for n, t in (("id", "integer"), ("tenant_id", "text"), ("customer_id", "integer"), ("total", "numeric"))
        ),
    }
    router: Router = load_router(tmp / "policy.yaml")
    router.add_schema("bench", schema, ("public",))
    ident = router.identity("app_t0")
    cold, cached = [], []
    for _ in range(repeat):
        router._cache.clear()  # a cold decision each round: parse, rewrite, verify
        for sql in STATEMENTS:
            started = time.perf_counter()
            router.decide(ident, "t0", "bench", sql)
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            router.decide(ident, "t0", "bench", sql)
            cached.append(time.perf_counter() - started)
    return {"cold": _percentiles(cold), "cached": _percentiles(cached)}


def pgbench_comparison(workdir: Path, args: argparse.Namespace) -> list[dict]:
    """The tenant query through pgwarden (policies on) and PgBouncer (no policies), alternating."""
    direct = common.start_cluster(workdir)
    common.psql(direct, "-c", SCHEMA)
    (workdir / "policies").mkdir()
    (workdir / "policies" / "bench.yaml").write_text(POLICY)
    overlay = workdir / "overlay.yaml"
    # policed sessions log in to PostgreSQL as themselves: pgwarden refuses to run them as a superuser
    overlay.write_text("policies: policies\nbackend_auth: {}\n")
    bouncer, _ = common.start_pgbouncer(workdir, direct, args.pool_size, ["app_t0", "postgres"])
    warden, _ = common.start_pgwarden(workdir, common.pgwarden_config(direct, args.pool_size, overlay))
    script = workdir / "tenant.sql"
    script.write_text(SCRIPT)
    targets = [
        Target("pgbouncer", bouncer.port, user="app_t0"),
        Target("pgwarden+policies", warden.port, user="app_t0"),
    ]
    rows = []
    for round_no in range(args.rounds):
        for mode in args.modes:
            for target in targets if round_no % 2 == 0 else targets[::-1]:
                load = Load(mode=mode, clients=args.clients, jobs=args.jobs, duration=args.duration, script=script)
                result = run_pgbench(target, load)
                rows.append(
                    {
                        "round": round_no,
                        "mode": mode,
                        "target": target.name,
                        "tps": result.tps,
                        "latency_ms": result.latency_ms,
                        "failed": result.failed,
                        "error": result.error,
                    }
                )
                print(f"  {mode:9} {target.name:18} tps={result.tps} failed={result.failed} {result.error}", flush=True)
    return rows


def table(rows: list[dict], modes: list[str]) -> str:
    out = ["| mode | PgBouncer TPS | pgwarden + policies TPS | ratio |", "| --- | ---: | ---: | ---: |"]
    for mode in modes:

        def mean(name: str, mode: str = mode) -> float:
            values = [r["tps"] for r in rows if r["mode"] == mode and r["target"] == name and r["tps"]]
            return statistics.mean(values) if values else 0.0

        b, w = mean("pgbouncer"), mean("pgwarden+policies")
        out.append(f"| {mode} | {b:.0f} | {w:.0f} | {w / b:.2f} |" if b else f"| {mode} | - | {w:.0f} | - |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="prepared,extended,simple")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200, help="rounds of the rewrite-cost loop")
    parser.add_argument("--skip-pgbench", action="store_true")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    common.install_signal_handlers()
    workdir = common.make_workdir()
    costs = rewrite_costs(workdir, args.repeat)
    print("rewrite cost per statement (Router.decide):")
    print(json.dumps(costs, indent=2))
    if not args.skip_pgbench:
        rows = pgbench_comparison(workdir, args)
        print(
            textwrap.dedent(f"""
            pgbench -f tenant.sql (SELECT ... FROM customers WHERE id = :id as app_t0, tenant t0),
            -c {args.clients} -j {args.jobs} -T {args.duration}, {args.rounds} rounds, pool size {args.pool_size}:
            """)
        )
        print(table(rows, args.modes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
