"""Result cache: pgbench through pgwarden with `cache:` (memory, Redis) against PgBouncer and direct PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

import common
from common import BINDIR, Load, Target

RESULTS_DIR = Path(__file__).resolve().parent / "results"
AGGREGATE_SQL = "select count(*), sum(abalance), avg(abalance) from pgbench_accounts"
POINT_SCRIPT = "\\set aid random(1, {keys})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
# What the cache needs (a logical WAL consumer), pg_stat_statements to count what reached PostgreSQL, and
# synchronous_commit back at its default (common.PG_SETTINGS turns it off). Applied by a restart.
CLUSTER_SQL = [
    "ALTER SYSTEM SET wal_level = logical",
    "ALTER SYSTEM SET max_wal_senders = 10",
    "ALTER SYSTEM SET max_replication_slots = 10",
    "ALTER SYSTEM SET synchronous_commit = on",
    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
]
CACHED = ("pgwarden+cache", "pgwarden+cache/redis")  # the pgwardens whose cache lists pgbench_accounts
_CACHE_METRIC = re.compile(r"^(pgwarden_(?!rewrite_)\w*cache\w*(?:\{[^}]*\})?) ([\d.e+-]+)$", re.M)


@dataclass(frozen=True)
class Proxy:
    """One proxy under test: its target, process and (pgwarden) metrics port; `table` is what its cache reads."""

    target: Target
    proc: subprocess.Popen
    http_port: int | None = None
    table: str | None = None


@dataclass
class Run:
    """One pgbench run: pgbench's numbers, the statements that reached PostgreSQL, the CPU used."""

    part: str
    workload: str
    mode: str
    target: str
    tps: float | None
    latency_ms: float | None
    transactions: int
    failed: int
    aborted_clients: int
    error: str
    backend_statements: int
    loadavg_before: float
    duration_s: int
    cpu_s: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=int, default=8, help="seconds per run, pgbench -T (default 8)")
    p.add_argument("--scale", type=int, default=4, help="pgbench -i -s (default 4: 400,000 accounts)")
    p.add_argument("--pool-size", type=int, default=10, help="pgwarden pool.size and PgBouncer default_pool_size")
    p.add_argument("--keys", type=int, default=1000, help="point reads pick aid in 1..KEYS (default 1000)")
    p.add_argument("--overhead-rounds", type=int, default=3, help="alternating cache on/off rounds (default 3)")
    p.add_argument("--overhead-modes", default="simple,prepared", help="pgbench -M modes of part 3")
    p.add_argument("--parts", default="1,2,3", help="which parts to run, comma-separated (default 1,2,3)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="cache.redis URL ('' to skip it)")
    p.add_argument("--output", type=Path, help="JSON report path (default bench/results/cache-<date>.json)")
    return p.parse_args(argv)


# --- setup -------------------------------------------------------------------------------------------


def start_cluster(workdir: Path, scale: int) -> Target:
    """A throwaway cluster with wal_level = logical and pg_stat_statements, then pgbench -i."""
    direct = common.start_cluster(workdir)
    for sql in CLUSTER_SQL:
        common.psql(direct, "-c", sql)
    with open(workdir / "pgdata" / "pg_hba.conf", "a") as hba:
        hba.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")
    pg_ctl = [str(BINDIR / "pg_ctl"), "-D", str(workdir / "pgdata"), "-l", str(workdir / "postgres.log")]
    restart = common.as_run_user([*pg_ctl, "-m", "fast", "-w", "-t", "60", "restart"])
    subprocess.run(restart, cwd=workdir, check=True, capture_output=True, start_new_session=True)
    common.psql(direct, "-c", "CREATE EXTENSION pg_stat_statements")
    print(f"PostgreSQL on {common.HOST}:{direct.port} (wal_level logical); pgbench -i -s {scale} ...", flush=True)
    common.pgbench_init(direct, scale)
    common.psql(direct, "-c", "VACUUM ANALYZE")
    return direct


def start_warden(workdir: Path, direct: Target, pool_size: int, name: str, cache: dict | None) -> Proxy:
    """A pgwarden (workers: 1) with `cache` as its `cache:` section (None: no cache), named `name` in the report."""
    config = common.pgwarden_config(direct, pool_size, None, workers=1)
    if cache is not None:
        config["cache"] = cache
    target, proc = common.start_pgwarden(workdir, config, slug(name))
    table = cache["tables"][0].partition(".")[2] if cache else None
    return Proxy(Target(name, target.port), proc, config["http"]["port"], table)


def slug(name: str) -> str:
    """A target's name as its file names: "pgwarden+cache/redis" -> "pgwarden-cache-redis"."""
    return re.sub(r"\W+", "-", name)


def start_proxies(workdir: Path, direct: Target, args: argparse.Namespace) -> dict[str, Proxy]:
    """PgBouncer and the pgwardens: without cache; cache in memory; cache in Redis; cache of other tables."""
    bouncer, proc = common.start_pgbouncer(workdir, direct, args.pool_size, ["postgres"])
    proxies = {"pgbouncer": Proxy(bouncer, proc)}
    accounts = ["public.pgbench_accounts"]
    variants = {
        "pgwarden": None,
        "pgwarden+cache": {"tables": accounts},
        "pgwarden+cache/redis": {"tables": accounts, "redis": args.redis, "key_prefix": args.key_prefix},
        "pgwarden+cache/other": {"tables": ["public.pgbench_branches", "public.pgbench_tellers"]},
    }
    if not args.redis:
        del variants["pgwarden+cache/redis"]
    for name, cache in variants.items():
        proxies[name] = start_warden(workdir, direct, args.pool_size, name, cache)
    return proxies


def forget_redis_keys(url: str, prefix: str) -> None:
    """Delete the keys this run left in Redis (answers expire by themselves; table versions do not)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return
    scan = subprocess.run([cli, "-u", url, "--scan", "--pattern", f"{prefix}*"], capture_output=True, text=True)
    keys = scan.stdout.split()
    for start in range(0, len(keys), 500):
        subprocess.run([cli, "-u", url, "del", *keys[start : start + 500]], capture_output=True)


def redis_server() -> dict[str, int]:
    """{"redis": pid} of the machine's redis-server (its CPU is the cache's too), or {} if none runs."""
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
    return {"redis": int(found[0])} if found else {}


def backend_statements(direct: Target, table: str) -> int:
    """Statements naming `table` that PostgreSQL executed so far (pg_stat_statements)."""
    sql = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        f"WHERE query ILIKE '%{table}%' AND query NOT ILIKE '%pg_stat_statements%'"
    )
    return int(common.psql(direct, "-c", sql))


def wait_serving(direct: Target, proxy: Proxy, timeout: float = 30.0) -> float:
    """Seconds until a repeated read of the proxy's cached table no longer reaches PostgreSQL."""
    started = time.monotonic()
    sql = f"SELECT count(*) FROM {proxy.table}"
    while time.monotonic() - started < timeout:
        common.psql(proxy.target, "-c", sql)
        before = backend_statements(direct, proxy.table)
        common.psql(proxy.target, "-c", sql)
        if backend_statements(direct, proxy.table) == before:
            return round(time.monotonic() - started, 2)
        time.sleep(0.2)
    raise RuntimeError(f"{proxy.target.name}: its cache served nothing after {timeout:.0f} s")


def check_answers(direct: Target, proxy: Proxy) -> dict[str, bool]:
    """The cached aggregate equals PostgreSQL's: served twice, after a write through pgwarden, after one around it."""
    truth = common.psql(direct, "-c", AGGREGATE_SQL)
    checks = {"read twice": [common.psql(proxy.target, "-c", AGGREGATE_SQL) for _ in range(2)] == [truth, truth]}
    common.psql(proxy.target, "-c", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1")
    checks["after write through pgwarden"] = common.psql(proxy.target, "-c", AGGREGATE_SQL) == common.psql(
        direct, "-c", AGGREGATE_SQL
    )
    common.psql(direct, "-c", "UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = 1")
    time.sleep(1.5)  # cache.max_lag_ms (1 s) bounds how late a write around pgwarden is seen
    checks["1.5 s after a write around it"] = common.psql(proxy.target, "-c", AGGREGATE_SQL) == common.psql(
        direct, "-c", AGGREGATE_SQL
    )
    return checks


# --- runs ---------------------------------------------------------------------------------------------


def run_one(part: str, workload: str, load: Load, target: Target, direct: Target, meter: common.CpuMeter) -> Run:
    before, loadavg = backend_statements(direct, "pgbench_accounts"), os.getloadavg()[0]
    r = common.run_pgbench(target, load, meter)
    reached = backend_statements(direct, "pgbench_accounts") - before
    run = Run(
        part, workload, load.mode, target.name, r.tps, r.latency_ms, r.transactions, r.failed, r.aborted_clients,
        r.error, reached, loadavg, load.duration, r.cpu_s,
    )  # fmt: skip
    print(f"  {part} {workload:10} {load.mode:8} {target.name:21} load {loadavg:.2f}  {progress(run)}", flush=True)
    return run


def progress(run: Run) -> str:
    err = f"  error: {run.error}" if run.error else ""
    return (
        f"tps {run.tps or 0:9.1f}  latency {run.latency_ms or 0:8.3f} ms  from cache {served(run)}"
        f"  failed {run.failed} aborted {run.aborted_clients}{err}"
    )


def throughput_runs(args: argparse.Namespace, workdir: Path, direct: Target, proxies: dict, meter, parts) -> list[Run]:
    """Parts 1 and 2: the aggregate and the point reads, each through every target once, side by side."""
    (workdir / "aggregate.sql").write_text(AGGREGATE_SQL + ";\n")
    (workdir / "point.sql").write_text(POINT_SCRIPT.format(keys=args.keys))
    cached = [name for name in CACHED if name in proxies]
    runs = []
    aggregate = Load("simple", 4, 2, args.duration, workdir / "aggregate.sql")
    for name in ["direct", "pgwarden", *cached] if "1" in parts else []:
        target = direct if name == "direct" else proxies[name].target
        runs.append(run_one("1", "aggregate", aggregate, target, direct, meter))
    for mode in ("simple", "prepared") if "2" in parts else ():
        point = Load(mode, 10, 2, args.duration, workdir / "point.sql")
        for name in ["direct", "pgbouncer", "pgwarden", *cached]:
            target = direct if name == "direct" else proxies[name].target
            runs.append(run_one("2", "point", point, target, direct, meter))
    return runs


def overhead_runs(args: argparse.Namespace, direct: Target, proxies: dict, meter) -> list[Run]:
    """Part 3: pgbench -S (a table the cache does not list) with and without `cache:`, alternating."""
    pair = [proxies["pgwarden"].target, proxies["pgwarden+cache/other"].target]
    runs = []
    for rnd in range(args.overhead_rounds):
        for mode in args.overhead_modes.split(","):
            for target in pair if rnd % 2 == 0 else pair[::-1]:
                runs.append(run_one("3", "select-only", Load(mode, 10, 2, args.duration), target, direct, meter))
    return runs


def cache_metrics(proxies: dict[str, Proxy]) -> dict[str, dict[str, float]]:
    """Cache lines of each pgwarden's /metrics (none yet in the first cut), rewrite-cache lines left out."""
    found = {}
    for name, proxy in proxies.items():
        if proxy.http_port is None:
            continue
        try:
            url = f"http://{common.HOST}:{proxy.http_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            continue
        found[name] = {metric: float(value) for metric, value in _CACHE_METRIC.findall(text)}
    return found


def log_problems(workdir: Path, name: str) -> list[str]:
    """The WARNING, ERROR and Traceback lines of a pgwarden's log (at most 20)."""
    path = workdir / f"{slug(name)}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line for line in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback", line)][:20]


def benchmark(args: argparse.Namespace) -> tuple[list[Run], dict]:
    """Start everything, check answers, run the three parts; the runs and the JSON report."""
    workdir = common.make_workdir()
    direct = start_cluster(workdir, args.scale)
    if args.redis:
        common.CLEANUP.callback(forget_redis_keys, args.redis, args.key_prefix)
    proxies = start_proxies(workdir, direct, args)
    waited = {name: wait_serving(direct, p) for name, p in proxies.items() if p.table is not None}
    print(f"caches serving after {waited} s", flush=True)
    checks = {name: check_answers(direct, proxies[name]) for name in CACHED if name in proxies}
    print(f"answers equal PostgreSQL's: {checks}", flush=True)
    pids = {"direct": common.postmaster_pid(workdir), **{name: p.proc.pid for name, p in proxies.items()}}
    meter = common.CpuMeter({**pids, **redis_server()})
    started = time.time()
    parts = args.parts.split(",")
    runs = throughput_runs(args, workdir, direct, proxies, meter, parts) if {"1", "2"} & set(parts) else []
    runs += overhead_runs(args, direct, proxies, meter) if "3" in parts else []
    return runs, {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": common.machine_info(),
        "settings": {**vars(args), "output": str(args.output), "cluster_sql": CLUSTER_SQL},
        "serving_after_s": waited,
        "checks": checks,
        "runs": [asdict(run) for run in runs],
        "cache_metrics": cache_metrics(proxies),
        "log_problems": {name: log_problems(workdir, name) for name in proxies if name != "pgbouncer"},
        "exited": [name for name, p in proxies.items() if p.proc.poll() is not None],
    }


# --- the report ---------------------------------------------------------------------------------------


def served(run: Run) -> str:
    """The share of pgbench's transactions PostgreSQL never saw (each transaction is one statement)."""
    if not run.transactions:
        return "n/a"
    return f"{100 * max(0, run.transactions - run.backend_statements) / run.transactions:.1f}%"


def others(run: Run) -> float:
    """The share of the machine's CPU neither PostgreSQL, the proxies nor pgbench used (other people's work)."""
    return 100 * run.cpu_s.get("other", 0) / ((os.cpu_count() or 1) * run.duration_s)


def cpu_us(run: Run, process: str) -> str:
    seconds = run.cpu_s.get(process)
    return f"{1e6 * seconds / run.transactions:.1f}" if seconds is not None and run.transactions else "n/a"


def ratio(run: Run, runs: list[Run], target: str) -> str:
    base = next((r for r in runs if (r.part, r.mode, r.target) == (run.part, run.mode, target)), None)
    usable = base is not None and base.tps and not base.aborted_clients and not base.error
    return f"{run.tps / base.tps:.2f}×" if usable and run.tps and not run.aborted_clients else "n/a"


def throughput_table(runs: list[Run]) -> str:
    lines = [
        "| part | workload | mode | target | TPS | latency ms | × direct | × PgBouncer | served by the cache "
        "| proxy CPU µs/txn | PostgreSQL CPU µs/txn | Redis CPU µs/txn | failed / aborted | others' CPU % |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        if r.part == "3":
            continue
        mark = " †" if r.aborted_clients or r.error else ""
        proxy = cpu_us(r, r.target) if r.target != "direct" else "–"
        lines.append(
            f"| {r.part} | {r.workload} | {r.mode} | {r.target} | {r.tps or 0:,.0f}{mark} | {r.latency_ms or 0:.3f} "
            f"| {ratio(r, runs, 'direct')} | {ratio(r, runs, 'pgbouncer') if r.part == '2' else '–'} | {served(r)} "
            f"| {proxy} | {cpu_us(r, 'direct')} | {cpu_us(r, 'redis')} | {r.failed} / {r.aborted_clients} "
            f"| {others(r):.0f} |"
        )
    return "\n".join(lines)


def overhead_rows(runs: list[Run]) -> list[dict]:
    """Part 3 by mode: median TPS and proxy CPU per transaction without and with `cache:`, and the cost."""
    rows = []
    for mode in dict.fromkeys(r.mode for r in runs if r.part == "3"):
        off = [r for r in runs if (r.part, r.mode, r.target) == ("3", mode, "pgwarden")]
        on = [r for r in runs if (r.part, r.mode, r.target) == ("3", mode, "pgwarden+cache/other")]
        tps_off, tps_on = median(r.tps or 0 for r in off), median(r.tps or 0 for r in on)
        cpu_off = median(1e6 * r.cpu_s["pgwarden"] / r.transactions for r in off if r.transactions)
        cpu_on = median(1e6 * r.cpu_s["pgwarden+cache/other"] / r.transactions for r in on if r.transactions)
        rows.append({
            "mode": mode, "tps_off": [r.tps for r in off], "tps_on": [r.tps for r in on],
            "median_off": tps_off, "median_on": tps_on, "cost_pct": 100 * (1 - tps_on / tps_off) if tps_off else None,
            "cpu_us_off": cpu_off, "cpu_us_on": cpu_on, "others_pct": median(others(r) for r in off + on),
        })  # fmt: skip
    return rows


def overhead_table(rows: list[dict]) -> str:
    lines = [
        "| mode | TPS without `cache:` (median; runs) | TPS with `cache:` of other tables (median; runs) "
        "| cost (1 − on/off) | proxy CPU µs/txn off → on (medians) | others' CPU % (median) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        off = ", ".join(f"{t or 0:,.0f}" for t in row["tps_off"])
        on = ", ".join(f"{t or 0:,.0f}" for t in row["tps_on"])
        lines.append(
            f"| {row['mode']} | {row['median_off']:,.0f} ({off}) | {row['median_on']:,.0f} ({on}) "
            f"| {row['cost_pct']:.1f}% | {row['cpu_us_off']:.1f} → {row['cpu_us_on']:.1f} | {row['others_pct']:.0f} |"
        )
    return "\n".join(lines)


def notes(report: dict) -> str:
    out = [f"- caches serving after: {report['serving_after_s']} s"]
    for name, checks in report["checks"].items():
        wrong = [what for what, ok in checks.items() if not ok]
        verdict = "WRONG " + ", ".join(wrong) if wrong else "equal PostgreSQL's"
        out.append(f"- {name}: answers {verdict} ({len(checks)} checks)")
    out += [f"- {name} /metrics: {values or 'no cache metrics'}" for name, values in report["cache_metrics"].items()]
    out += [f"- {name} log: {line}" for name, lines in report["log_problems"].items() for line in lines]
    out += [f"- {name} EXITED during the benchmark" for name in report["exited"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.key_prefix = f"pgwarden:bench:{secrets.token_hex(4)}:"
    runs, report = common.stopping_all(lambda: benchmark(args))
    report["overhead"] = overhead_rows(runs)
    machine = report["machine"]
    print(
        f"\n{machine['nproc']} cores, {machine['cpu']}; {machine['postgresql']}; {machine['pgbouncer']}; "
        f"pgwarden {machine['pgwarden_commit']}\n"
    )
    tables = [throughput_table(runs) if any(r.part != "3" for r in runs) else "", overhead_table(report["overhead"])]
    print("\n\n".join([*filter(None, tables), notes(report)]))
    path = args.output or RESULTS_DIR / f"cache-{report['date'].replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return 0 if all(all(c.values()) for c in report["checks"].values()) and not report["exited"] else 1


if __name__ == "__main__":
    sys.exit(main())
