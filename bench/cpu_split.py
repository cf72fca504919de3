"""Where each proxy's CPU goes per pgbench transaction: user and system µs, context switches (PgBouncer, pgwarden, a bare uvloop relay).

    .venv/bin/python bench/cpu_split.py                        # simple and extended, 8 s each, 2 rounds
    .venv/bin/python bench/cpu_split.py --modes simple --rounds 1

Read from /proc/<pid>/stat and /proc/<pid>/status before and after each run of `pgbench -S -c 10 -j 2`.
`relay` is bench/byte_relay.py: uvloop relaying bytes with each client pinned to its own backend, nothing
parsed. Its user time is what Python and the event loop cost per transaction before any proxy work; its
system time is the kernel's share of the same socket reads and writes every proxy makes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import common
from common import Load, Target

CLK = common.CLK_TCK


@dataclass(frozen=True)
class Split:
    """One run: a target, a mode, its TPS and its CPU and context switches per transaction."""

    target: str
    mode: str
    tps: float
    user_us: float
    system_us: float
    voluntary: float
    involuntary: float


def _sample(pid: int) -> tuple[float, float, int, int]:
    """(user s, system s, voluntary switches, involuntary switches) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if "ctxt_switches" in line)
    return (
        int(fields[11]) / CLK,
        int(fields[12]) / CLK,
        int(status["voluntary_ctxt_switches"]),
        int(status["nonvoluntary_ctxt_switches"]),
    )


def measured(target: Target, pid: int, load: Load) -> Split | None:
    before = _sample(pid)
    result = common.run_pgbench(target, load)
    after = _sample(pid)
    if not result.transactions or result.aborted_clients:
        print(f"{load.mode} {target.name}: no clean run ({result.error or result.returncode})", file=sys.stderr)
        return None
    user, system, vol, invol = (b - a for a, b in zip(before, after))
    n = result.transactions
    return Split(target.name, load.mode, result.tps or 0.0, 1e6 * user / n, 1e6 * system / n, vol / n, invol / n)


def start_relay(workdir: Path, backend: Target) -> tuple[Target, int]:
    port = common.free_port()
    script = Path(__file__).resolve().parent / "byte_relay.py"
    proc = common.spawn([sys.executable, str(script), str(port), str(backend.port)], workdir / "relay.log", workdir)
    common.CLEANUP.callback(common.stop_process, proc)
    common.wait_for_port(port, 10, proc)
    return Target("relay", port=port, user=backend.user), proc.pid


def table(splits: list[Split]) -> str:
    rows = [
        "| mode | target | TPS | user µs/txn | system µs/txn | voluntary switches/txn | involuntary switches/txn |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows += [
        f"| {s.mode} | {s.target} | {s.tps:,.0f} | {s.user_us:.1f} | {s.system_us:.1f} | "
        f"{s.voluntary:.3f} | {s.involuntary:.3f} |"
        for s in splits
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="simple,extended")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args(argv)

    def work() -> list[Split]:
        workdir = common.make_workdir()
        direct = common.start_cluster(workdir)
        common.pgbench_init(direct, 10)
        bouncer, bouncer_proc = common.start_pgbouncer(workdir, direct, args.pool_size, ["postgres"])
        warden, warden_proc = common.start_pgwarden(workdir, common.pgwarden_config(direct, args.pool_size, None))
        targets = [(bouncer, bouncer_proc.pid), (warden, warden_proc.pid), start_relay(workdir, direct)]
        splits = []
        for round_ in range(args.rounds):
            order = targets[round_ % 3 :] + targets[: round_ % 3]  # (drift falls on every target alike)
            for mode in args.modes.split(","):
                for target, pid in order:
                    if split := measured(target, pid, Load(mode, 10, 2, args.duration)):
                        splits.append(split)
                        print(f"{mode} {target.name}: user {split.user_us:.1f} µs, system {split.system_us:.1f} µs")
        return splits

    splits = common.stopping_all(work)
    print(table(sorted(splits, key=lambda s: (s.mode, s.target))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
