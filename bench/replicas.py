"""Read routing to a streaming replica: pgbench through pgwarden with and without a replica and read-your-writes."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import common
from common import BINDIR, Load, Target

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RAW_SCRIPT = """\\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
"""
# The primary as a replicated one would run (the fixture's settings); fsync stays off, as in every bench cluster.
PRIMARY_SQL = [
    "ALTER SYSTEM SET synchronous_commit = on",
    "ALTER SYSTEM SET full_page_writes = on",
    "SELECT pg_reload_conf()",
]
_ROUTED = re.compile(r'^pgwarden_routed_total\{route="(\w+)"\} ([\d.e+]+)$', re.M)


@dataclass(frozen=True)
class Warden:
    """One pgwarden under test: its name, what it listens on, its process and its metrics port."""

    name: str
    target: Target
    proc: subprocess.Popen
    http_port: int


@dataclass
class Run:
    """One pgbench run through one pgwarden: pgbench's numbers, where its transactions were routed, the load."""

    workload: str
    warden: str
    tps: float | None
    transactions: int
    failed: int
    aborted_clients: int
    error: str
    routed_primary: int
    routed_replica: int
    loadavg_before: tuple[float, float, float]
    cpu_s: dict[str, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=10, help="pgbench -c (default 10)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--duration", type=int, default=10, help="seconds per run, pgbench -T (default 10)")
    p.add_argument("--mode", default="simple", help="pgbench -M for both workloads (default simple)")
    p.add_argument("--rounds", type=int, default=1, help="rounds; the pgwarden order rotates each round (default 1)")
    p.add_argument("--pool-size", type=int, default=10, help="pgwarden pool.size (default 10)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--check-interval", type=float, default=0.5, help="routing.check_interval (default 0.5)")
    p.add_argument("--output", type=Path, help="JSON report path (default bench/results/replicas-<date>.json)")
    return p.parse_args(argv)


def start_replica(workdir: Path, primary: Target) -> tuple[Target, Path]:
    """pg_basebackup -R of `primary` into workdir/replica, started on a free port; stopped at exit."""
    home, port = workdir / "replica", common.free_port()
    home.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, common.RUN_AS, common.RUN_AS)
    data = home / "pgdata"
    backup = [str(BINDIR / "pg_basebackup"), *primary.libpq_args(), "-D", str(data)]
    as_user = common.as_run_user
    subprocess.run(
        as_user([*backup, "-R", "-c", "fast", "-X", "stream", "--no-sync"]),
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nunix_socket_directories = '{home}'\nwal_receiver_status_interval = 1\n")
    pg_ctl = [str(BINDIR / "pg_ctl"), "-D", str(data), "-l", str(home / "postgres.log")]
    stop = as_user([*pg_ctl, "-m", "fast", "-w", "stop"])
    common.CLEANUP.callback(subprocess.run, stop, cwd=workdir, capture_output=True)
    start = as_user([*pg_ctl, "-w", "-t", "60", "start"])
    subprocess.run(start, cwd=workdir, check=True, capture_output=True, start_new_session=True)
    return Target("replica", port), data


def start_cluster(workdir: Path, scale: int) -> tuple[Target, Target, dict[str, int]]:
    """Primary (pgbench -i), then its replica, once it has replayed everything; also their postmaster pids."""
    primary = common.start_cluster(workdir)
    with open(workdir / "pgdata" / "pg_hba.conf", "a") as hba:
        hba.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")
    for sql in PRIMARY_SQL:
        common.psql(primary, "-c", sql)
    print(f"primary on {common.HOST}:{primary.port}; pgbench -i -s {scale} ...", flush=True)
    common.pgbench_init(primary, scale)
    replica, data = start_replica(workdir, primary)
    lsn = common.psql(primary, "-c", "SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + 120
    while common.psql(replica, "-c", f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") != "t":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica has not replayed {lsn} after 120 s")
        time.sleep(0.1)
    print(f"replica on {common.HOST}:{replica.port} has replayed {lsn}", flush=True)
    pids = {"primary": common.postmaster_pid(workdir), "replica": int((data / "postmaster.pid").read_text().split()[0])}
    return primary, replica, pids


def start_wardens(workdir: Path, args: argparse.Namespace, primary: Target, replica: Target) -> list[Warden]:
    """Three pgwardens: primary only; with the replica and read-your-writes on; with it off."""
    replicas = [{"host": replica.host, "port": replica.port, "weight": 1.0}]

    def routing(ryw: bool) -> dict:
        return {"replicas": replicas, "routing": {"read_your_writes": ryw, "check_interval": args.check_interval}}

    variants = {"primary only": {}, "replica, ryw on": routing(True), "replica, ryw off": routing(False)}
    wardens = []
    for name, extra in variants.items():
        config = {**common.pgwarden_config(primary, args.pool_size, None, workers=1), **extra}
        target, proc = common.start_pgwarden(workdir, config, slug(name))
        wardens.append(Warden(name, Target(name, target.port), proc, config["http"]["port"]))
    for warden in wardens:
        common.psql(warden.target, "-c", "SELECT 1", timeout=20)
    return wardens


def routed(warden: Warden) -> dict[str, int]:
    """pgwarden_routed_total by route from /metrics (empty without replicas, or if pgwarden does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{common.HOST}:{warden.http_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {route: int(float(value)) for route, value in _ROUTED.findall(text)}


def slug(name: str) -> str:
    """A pgwarden's name as its file names: "replica, ryw on" -> "replica-ryw-on"."""
    return re.sub(r"\W+", "-", name)


def log_problems(workdir: Path, warden: Warden) -> list[str]:
    """The WARNING, ERROR and Traceback lines of a pgwarden's log (at most 20)."""
    path = workdir / f"{slug(warden.name)}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line for line in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback", line)][:20]


def run_one(workload: str, load: Load, warden: Warden, meter: common.CpuMeter) -> Run:
    loadavg, before = os.getloadavg(), routed(warden)
    result = common.run_pgbench(warden.target, load, meter)
    after = routed(warden)
    delta = {route: after.get(route, 0) - before.get(route, 0) for route in ("primary", "replica")}
    run = Run(
        workload, warden.name, result.tps, result.transactions, result.failed, result.aborted_clients, result.error,
        delta["primary"], delta["replica"], loadavg, result.cpu_s,
    )  # fmt: skip
    print(f"  {workload:16} {warden.name:17} load {loadavg[0]:.2f}  {summary(run)}", flush=True)
    return run


def benchmark(args: argparse.Namespace) -> tuple[list[Run], dict]:
    """Start everything, run every workload through its pgwardens; the runs and the JSON report."""
    workdir = common.make_workdir()
    primary, replica, pids = start_cluster(workdir, args.scale)
    wardens = start_wardens(workdir, args, primary, replica)
    meter = common.CpuMeter({**pids, **{w.name: w.proc.pid for w in wardens}})
    (workdir / "raw.sql").write_text(RAW_SCRIPT)
    base = Load(args.mode, args.clients, args.jobs, args.duration)
    raw = Load(args.mode, args.clients, args.jobs, args.duration, workdir / "raw.sql", (f"scale={args.scale}",))
    plan = [("select-only", base, wardens[:2]), ("read-after-write", raw, wardens)]
    started, runs = time.time(), []
    for rnd in range(args.rounds):
        for workload, load, chosen in plan:
            for warden in chosen[rnd % len(chosen) :] + chosen[: rnd % len(chosen)]:
                runs.append(run_one(workload, load, warden, meter))
    return runs, {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": common.machine_info(),
        "settings": {**vars(args), "output": str(args.output), "script": RAW_SCRIPT, "primary_sql": PRIMARY_SQL},
        "runs": [asdict(run) for run in runs],
        "log_problems": {w.name: log_problems(workdir, w) for w in wardens},
        "exited": [w.name for w in wardens if w.proc.poll() is not None],
    }


def per_txn_us(run: Run) -> float | None:
    return 1e6 * run.cpu_s[run.warden] / run.transactions if run.transactions and run.cpu_s else None


def share(run: Run) -> str:
    """Reads served by the replica per pgbench transaction (each workload reads once per transaction)."""
    return f"{100 * run.routed_replica / run.transactions:.1f}%" if run.transactions else "n/a"


def summary(run: Run) -> str:
    err = f" error: {run.error}" if run.error else ""
    return (
        f"tps {run.tps or 0:.0f}  reads on replica {share(run)}  routed p/r {run.routed_primary}/{run.routed_replica}"
        f"  failed {run.failed} aborted {run.aborted_clients}  pgwarden {per_txn_us(run) or 0:.1f} µs/txn{err}"
    )


def markdown_table(runs: list[Run], cores: int, duration: int) -> str:
    lines = [
        "| workload | pgwarden | TPS | reads on replica | routed primary / replica | pgwarden CPU µs/txn "
        "| failed / aborted | load avg before | others' CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        cpu, other = per_txn_us(r), 100 * r.cpu_s.get("other", 0) / (cores * duration)
        lines.append(
            f"| {r.workload} | {r.warden} | {r.tps or 0:,.0f} | {share(r)} | {r.routed_primary:,} / {r.routed_replica:,} "
            f"| {cpu or 0:.1f} | {r.failed} / {r.aborted_clients} | {r.loadavg_before[0]:.2f} | {other:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, report = common.stopping_all(lambda: benchmark(args))
    print(f"\npgwarden {report['machine']['pgwarden_commit']}\n")
    print(markdown_table(runs, os.cpu_count() or 1, args.duration))
    for name, lines in report["log_problems"].items():
        print("".join(f"\n{name} log: {line}" for line in lines))
    path = args.output or RESULTS_DIR / f"replicas-{report['date'].replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return 0 if all(r.tps and not r.aborted_clients for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
