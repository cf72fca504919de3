"""What the audit trail costs: pgbench through pgwarden with the audit file sink on and off, alternating;
also the CPU the proxy process and its audit writer process spend per transaction."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
from common import Load, Target, _proc_times, run_pgbench  # noqa: E402


def cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds of a pgwarden process and of its children (the audit writer)."""
    times = _proc_times()
    return times[pid][1], sum(own for ppid, own, _ in times.values() if ppid == pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="simple,prepared")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args(argv)
    common.install_signal_handlers()
    workdir = common.make_workdir()
    direct = common.start_cluster(workdir)
    common.pgbench_init(direct, 10)
    targets, pids = [], {}
    for name, overlay in (("audit off", ""), ("audit on", "audit: {path: audit.jsonl}\n")):
        sub = workdir / name.replace(" ", "-")
        sub.mkdir()
        (sub / "overlay.yaml").write_text(overlay or "{}\n")
        warden, proc = common.start_pgwarden(sub, common.pgwarden_config(direct, args.pool_size, sub / "overlay.yaml"))
        targets.append(Target(name, warden.port))
        pids[name] = proc.pid
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for round_no in range(args.rounds):
        for mode in args.modes.split(","):
            for target in targets if round_no % 2 == 0 else targets[::-1]:
                load = Load(mode=mode, clients=args.clients, jobs=args.jobs, duration=args.duration)
                before = cpu_of(pids[target.name])
                result = run_pgbench(target, load)
                after = cpu_of(pids[target.name])
                print(f"  {mode:9} {target.name:10} tps={result.tps} failed={result.failed} {result.error}", flush=True)
                if result.tps:
                    results.setdefault((mode, target.name), []).append(result.tps)
                    cpu.setdefault((mode, target.name), []).append(
                        (after[0] - before[0], after[1] - before[1], result.transactions or 1)
                    )
    print(f"\npgbench -S -c {args.clients} -j {args.jobs} -T {args.duration}, {args.rounds} rounds:\n")
    print(
        "| mode | audit off TPS | audit on TPS | cost | proxy CPU/txn off | proxy CPU/txn on | writer CPU/txn |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for mode in args.modes.split(","):
        off = statistics.mean(results.get((mode, "audit off"), [0])) or 1
        on = statistics.mean(results.get((mode, "audit on"), [0]))
        per_txn = {
            name: [
                sum(c[i] for c in cpu.get((mode, name), []))
                * 1e6
                / max(1, sum(c[2] for c in cpu.get((mode, name), [])))
                for i in (0, 1)
            ]
            for name in ("audit off", "audit on")
        }
        print(
            f"| {mode} | {off:.0f} | {on:.0f} | {100 * (1 - on / off):.1f}% | "
            f"{per_txn['audit off'][0]:.1f} µs | {per_txn['audit on'][0]:.1f} µs | {per_txn['audit on'][1]:.1f} µs |"
        )
    files = sorted((workdir / "audit-on").glob("audit.jsonl*"))
    records = sum(1 for f in files for _ in open(f))
    print(f"\n{records} audit records written by the audited pgwarden ({len(files)} files).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
