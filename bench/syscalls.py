"""Syscalls per transaction of pgwarden and PgBouncer under the same pgbench load (strace -c -f on each proxy).

    .venv/bin/python bench/syscalls.py                  # simple, extended, prepared; 8 s each
    .venv/bin/python bench/syscalls.py --modes simple --duration 5

strace slows the traced process a great deal, so the TPS of a traced run means nothing; the counts per
transaction do not depend on speed (a transaction is the same messages either way), which is what this
measures: how many reads, writes and event-loop waits each proxy makes for one pgbench transaction.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common
from common import Load, Target

GROUPS = {
    "read": ("read", "recvfrom", "recvmsg", "readv"),
    "write": ("write", "sendto", "sendmsg", "writev"),
    "wait": ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "select", "pselect6", "ppoll"),
    "epoll_ctl": ("epoll_ctl",),
}
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


@dataclass(frozen=True)
class Count:
    """One traced run: the proxy, the pgbench mode, transactions done and syscalls by name."""

    target: str
    mode: str
    transactions: int
    calls: dict[str, int]

    def per_txn(self, group: str | None = None) -> float:
        names = GROUPS[group] if group else tuple(self.calls)
        return sum(self.calls.get(n, 0) for n in names) / max(self.transactions, 1)


def parse_strace(text: str) -> dict[str, int]:
    """strace -c's summary table: syscall name -> calls.

    >>> parse_strace("  45.10    0.001000          10       100         3 epoll_wait\\n")
    {'epoll_wait': 100}
    """
    calls: dict[str, int] = {}
    for line in text.splitlines():
        if (m := _ROW.match(line)) and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return calls


def traced_run(target: Target, pid: int, load: Load, workdir: Path) -> Count | None:
    """pgbench against `target` while strace counts the syscalls of process `pid` and its threads."""
    out = workdir / f"strace-{target.name}-{load.mode}.txt"
    strace = subprocess.Popen(["strace", "-c", "-f", "-qq", "-p", str(pid), "-o", str(out)])
    time.sleep(0.5)  # attached before the load starts
    result = common.run_pgbench(target, load)
    strace.send_signal(signal.SIGINT)
    strace.wait(timeout=30)
    if result.error or result.failed or result.aborted_clients or not result.transactions:
        print(f"{target.name} {load.mode}: not counted ({result.error or 'failed or aborted clients'})", flush=True)
        return None
    return Count(target.name, load.mode, result.transactions, parse_strace(out.read_text()))


def table(counts: list[Count]) -> str:
    head = "| mode | proxy | transactions | reads/txn | writes/txn | waits/txn | epoll_ctl/txn | all syscalls/txn |"
    rows = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in counts:
        groups = " | ".join(f"{c.per_txn(g):.2f}" for g in GROUPS)
        rows.append(f"| {c.mode} | {c.target} | {c.transactions} | {groups} | {c.per_txn():.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="simple,extended,prepared")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        print("strace is not installed: apt-get install -y strace", file=sys.stderr)
        return 1
    common.install_signal_handlers()
    with common.CLEANUP:
        workdir = common.make_workdir()
        direct = common.start_cluster(workdir)
        common.pgbench_init(direct, 10)
        proxies = [
            common.start_pgbouncer(workdir, direct, args.pool_size, ["postgres"]),
            common.start_pgwarden(workdir, common.pgwarden_config(direct, args.pool_size, None)),
        ]
        counts = []
        for mode in args.modes.split(","):
            for target, proc in proxies:
                load = Load(mode, args.clients, 2, args.duration)
                if count := traced_run(target, proc.pid, load, workdir):
                    counts.append(count)
                    print(f"{mode} {target.name}: {count.per_txn():.2f} syscalls/txn", flush=True)
        print(table(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
