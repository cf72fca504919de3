"""pgbench through pgwarden, PgBouncer and directly against a throwaway PostgreSQL; Markdown + JSON report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean

import common
import yaml
from common import Load, Result, Target

TARGETS = ("direct", "pgbouncer", "pgwarden")
MODES = ("simple", "extended", "prepared")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def csv_choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(items) - set(allowed))
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=10, help="pgbench -c (default 10)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--duration", type=int, default=15, help="seconds per run, pgbench -T (default 15)")
    p.add_argument(
        "--modes",
        type=csv_choices(MODES),
        default=list(MODES),
        help="pgbench -M modes, comma-separated (default simple,extended,prepared)",
    )
    p.add_argument(
        "--targets",
        type=csv_choices(TARGETS),
        default=list(TARGETS),
        help="comma-separated subset of direct,pgbouncer,pgwarden (default all)",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds; target order rotates each round (default 2)")
    p.add_argument("--pool-size", type=int, default=10, help="backend pool size of pgwarden and PgBouncer")
    p.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        help="pgwarden `workers`, comma-separated: one pgwarden per value, e.g. 1,2 side by side (default 1)",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="seconds of unrecorded direct load first (0: none)")
    p.add_argument("--script", type=Path, help="custom pgbench script (-f) instead of the built-in -S")
    p.add_argument(
        "--define",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pgbench -D for the custom script; repeatable",
    )
    p.add_argument("--user", default="postgres", help="user pgbench connects as (default postgres)")
    p.add_argument("--init-sql", type=Path, help="SQL file run as postgres on the cluster after pgbench -i")
    p.add_argument(
        "--target-config",
        type=Path,
        help="pgwarden config YAML merged over the generated one (auth users, policies, ...)",
    )
    p.add_argument("--output", type=Path, help="JSON report path (default bench/results/pgbench-<date>.json)")
    return p.parse_args(argv)


def start_targets(args: argparse.Namespace, workdir: Path) -> tuple[list[Target], dict[str, str], dict]:
    """Cluster, then PgBouncer and pgwarden as asked; returns the targets that answer SELECT 1,
    the skipped ones with the reason, and the proxy processes by target name."""
    direct = common.start_cluster(workdir)
    print(f"PostgreSQL on {common.HOST}:{direct.port}; pgbench -i -s {args.scale} ...", flush=True)
    common.pgbench_init(direct, args.scale)
    if args.init_sql:
        common.psql(direct, "-f", str(args.init_sql.resolve()))
    proxies, skipped, procs = start_proxies(args, workdir, direct)
    measured = [replace(t, user=args.user) for t in [direct, *proxies] if t.name.split("-")[0] in args.targets]
    return [t for t in measured if answers(t, skipped)], skipped, procs


def start_proxies(args: argparse.Namespace, workdir: Path, direct: Target):
    """PgBouncer and pgwarden if asked for; one that does not start is skipped with the reason."""
    starters = {
        "pgbouncer": lambda: common.start_pgbouncer(workdir, direct, args.pool_size, sorted({"postgres", args.user})),
    }
    for workers in args.workers:  # "pgwarden" runs workers: 1, "pgwarden-w2" workers: 2, ...
        name = "pgwarden" if workers == 1 else f"pgwarden-w{workers}"
        config = common.pgwarden_config(direct, args.pool_size, args.target_config, workers)
        starters[name] = lambda name=name, config=config: common.start_pgwarden(workdir, config, name)
    proxies, skipped, procs = [], {}, {}
    for name, start in starters.items():
        if name.split("-")[0] not in args.targets:
            continue
        try:
            target, procs[name] = start()
            proxies.append(target)
        except (RuntimeError, OSError) as exc:
            skipped[name] = str(exc)
    return proxies, skipped, procs


def answers(target: Target, skipped: dict[str, str]) -> bool:
    """SELECT 1 through `target`; on failure record why in `skipped`."""
    try:
        common.psql(target, "-c", "SELECT 1", timeout=20)
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        skipped[target.name] = f"SELECT 1 failed: {(getattr(exc, 'stderr', '') or str(exc)).strip()[:300]}"
        return False


def run_rounds(args: argparse.Namespace, targets: list[Target], procs: dict, meter: common.CpuMeter) -> list[Result]:
    """Every mode against every target, `args.rounds` times; the target order rotates each round."""
    results = []
    for rnd in range(args.rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for mode in args.modes:
            for target in order:
                result = run_one(args, target, mode, procs.get(target.name), meter)
                print(f"[round {rnd + 1}/{args.rounds}] {progress_line(result)}", flush=True)
                results.append(result)
    return results


def run_one(
    args: argparse.Namespace, target: Target, mode: str, proc: subprocess.Popen | None, meter: common.CpuMeter
) -> Result:
    if proc is not None and proc.poll() is not None:
        return Result(target.name, mode, error=f"{target.name} exited with status {proc.returncode}")
    load = Load(mode, args.clients, args.jobs, args.duration, args.script, tuple(args.define))
    return common.run_pgbench(target, load, meter)


def progress_line(r: Result) -> str:
    tps = f"{r.tps:10.1f}" if r.tps is not None else "       n/a"
    lat = f"{r.latency_ms:7.3f}" if r.latency_ms is not None else "    n/a"
    cpu = " ".join(f"{name} {seconds:.1f}" for name, seconds in r.cpu_s.items())
    err = f"  error: {r.error}" if r.error else ""
    return (
        f"{r.mode:<9} {r.target:<10} tps {tps}  latency {lat} ms  failed {r.failed}"
        f"  aborted clients {r.aborted_clients}  CPU s: {cpu}{err}"
    )


def summarize(results: list[Result], modes: list[str], names: list[str], cpu_capacity_s: float) -> list[dict]:
    """One row per (mode, target), in that order; `cpu_capacity_s` = cores x seconds of one run."""
    rows = []
    for mode in modes:
        by_target = {name: [r for r in results if r.mode == mode and r.target == name] for name in names}
        tps = {name: mean_of([r.tps for r in runs]) if complete(runs) else None for name, runs in by_target.items()}
        for name, runs in by_target.items():
            row = summary_row(mode, name, runs, cpu_capacity_s)
            rows.append({**row, "vs_pgbouncer": ratio(tps[name], tps.get("pgbouncer"))})
    return rows


def summary_row(mode: str, name: str, runs: list[Result], cpu_capacity_s: float) -> dict:
    """Means over rounds, totals of failures, CPU per transaction of the proxy and of PostgreSQL."""
    return {
        "mode": mode,
        "target": name,
        "tps": mean_of([r.tps for r in runs]),
        "complete": complete(runs),
        "tps_rounds": [r.tps for r in runs],
        "latency_ms": mean_of([r.latency_ms for r in runs]),
        "failed": sum(r.failed for r in runs),
        "aborted_clients": sum(r.aborted_clients for r in runs),
        "proxy_cpu_us_per_txn": mean_of([per_txn(r, name) for r in runs]) if name != "direct" else None,
        "postgres_cpu_us_per_txn": mean_of([per_txn(r, "postgres") for r in runs]),
        "other_cpu_pct": mean_of([100 * r.cpu_s["other"] / cpu_capacity_s for r in runs if r.cpu_s]),
        "errors": sorted({r.error for r in runs if r.error}),
    }


def per_txn(r: Result, process: str) -> float | None:
    """Microseconds of `process`'s CPU per transaction in run `r`."""
    if process not in r.cpu_s or not r.transactions:
        return None
    return 1e6 * r.cpu_s[process] / r.transactions


def complete(runs: list[Result]) -> bool:
    """Every round ran to the end with every client: only then is its TPS comparable."""
    return bool(runs) and all(r.tps is not None and not r.aborted_clients and r.returncode == 0 for r in runs)


def mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| mode | target | TPS (mean) | TPS per round | latency ms (mean) | failed | aborted clients "
        "| TPS / PgBouncer | proxy CPU µs/txn | PostgreSQL CPU µs/txn | others' CPU % |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rounds = ", ".join(fmt(t, ".0f") for t in row["tps_rounds"])
        mark = "" if row["complete"] else " †"
        lines.append(
            f"| {row['mode']} | {row['target']} | {fmt(row['tps'], '.0f')}{mark} | {rounds} "
            f"| {fmt(row['latency_ms'], '.3f')} | {row['failed']} | {row['aborted_clients']} "
            f"| {fmt(row['vs_pgbouncer'], '.2f')} | {fmt(row['proxy_cpu_us_per_txn'], '.1f')} "
            f"| {fmt(row['postgres_cpu_us_per_txn'], '.1f')} | {fmt(row['other_cpu_pct'], '.0f')} |"
        )
    return "\n".join(lines)


def notes(report: dict) -> str:
    rows = report["summary"]
    out = [f"- {name} not measured: {brief(reason)}" for name, reason in report["skipped"].items()]
    out += [
        f"- {name} exited during the benchmark; its log ends: {brief(log)}" for name, log in report["exited"].items()
    ]
    if not all(row["complete"] for row in rows):
        out.append("- † a run failed or clients aborted: partial TPS, not comparable (no ratio)")
    out += [f"- {row['mode']} / {row['target']}: {error}" for row in rows for error in row["errors"]]
    return "\n".join(out)


def brief(reason: str) -> str:
    """First and last line of a multi-line reason (a failed start: the message, then the log's last line)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def settings(args: argparse.Namespace) -> dict:
    return {
        "clients": args.clients,
        "jobs": args.jobs,
        "duration_s": args.duration,
        "modes": args.modes,
        "rounds": args.rounds,
        "pool_size": args.pool_size,
        "pgwarden_workers": args.workers,
        "scale": args.scale,
        "warmup_s": args.warmup,
        "user": args.user,
        "script": str(args.script) if args.script else "builtin select-only (-S)",
        "defines": args.define,
        "postgresql": common.PG_SETTINGS,
        "target_config": yaml.safe_load(args.target_config.read_text()) if args.target_config else None,
    }


def benchmark(args: argparse.Namespace) -> dict:
    """Start everything, warm up, run the rounds; returns the report (processes stop at exit)."""
    workdir = common.make_workdir()
    targets, skipped, procs = start_targets(args, workdir)
    for name, reason in skipped.items():
        print(f"{name} not measured: {reason}", file=sys.stderr, flush=True)
    names = [t.name for t in targets]
    meter = common.CpuMeter(
        {"postgres": common.postmaster_pid(workdir), **{name: proc.pid for name, proc in procs.items()}}
    )
    if args.warmup and targets:
        common.run_pgbench(
            targets[0], Load("simple", args.clients, args.jobs, args.warmup, args.script, tuple(args.define))
        )
    started = time.time()
    results = run_rounds(args, targets, procs, meter) if targets else []
    rows = summarize(results, args.modes, names, (os.cpu_count() or 1) * args.duration)
    exited = {name: common.tail(workdir / f"{name}.log", 5) for name, proc in procs.items() if proc.poll() is not None}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": common.machine_info(),
        "settings": settings(args),
        "skipped": skipped,
        "exited": exited,
        "summary": rows,
        "runs": [asdict(r) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = common.stopping_all(lambda: benchmark(args))
    machine = report["machine"]
    print(
        f"\n{machine['nproc']} cores, {machine['cpu']}, {machine['memory_gib']} GiB; "
        f"{machine['postgresql']}; {machine['pgbouncer']}; pgwarden {machine['pgwarden_commit']}\n"
    )
    print(markdown_table(report["summary"]))
    extra = notes(report)
    if extra:
        print("\n" + extra)
    stamp = report["date"].replace(":", "")
    path = args.output or RESULTS_DIR / f"pgbench-{stamp}.json"
    write_json(path, report)
    print(f"\nJSON: {path}")
    return 0 if report["summary"] else 1


if __name__ == "__main__":
    sys.exit(main())
