"""Memory of idle client connections: pgwarden's RSS with none and with N logged-in, idle clients.

    .venv/bin/python bench/idle_clients.py                  # 10,000 clients
    .venv/bin/python bench/idle_clients.py --clients 2000

Starts its own throwaway cluster and pgwarden (transaction pooling, trust auth), opens N client
connections from this process with a minimal asyncio client (StartupMessage, read to
ReadyForQuery), reads pgwarden's VmRSS (its process tree) before and after, and closes everything.
The target (issue 11): 10,000 idle clients under 200 MB for the whole proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import sys
import time
from pathlib import Path

import common

_PROTOCOL_3 = 196608


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (pgwarden inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    """VmRSS of `pid` and its descendants, in kB (pgwarden may run worker processes)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(child) for child in children]
    return total


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", _PROTOCOL_3) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


async def open_client(port: int, startup: bytes) -> asyncio.StreamWriter:
    """One client logged in and idle: startup sent, everything read up to ReadyForQuery."""
    reader, writer = await asyncio.open_connection(common.HOST, port)
    writer.write(startup)
    while True:
        header = await reader.readexactly(5)
        body = await reader.readexactly(struct.unpack("!I", header[1:])[0] - 4)
        if header[:1] == b"E":
            raise RuntimeError(f"pgwarden refused a client: {body!r}")
        if header[:1] == b"Z":
            return writer


async def open_clients(port: int, count: int, parallel: int) -> list[asyncio.StreamWriter]:
    startup = startup_message("postgres", "postgres")
    gate = asyncio.Semaphore(parallel)

    async def one() -> asyncio.StreamWriter:
        async with gate:
            return await open_client(port, startup)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_clients(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.write(b"X\0\0\0\x04")
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    args = parser.parse_args()
    common.install_signal_handlers()
    limit = raise_fd_limit()
    if limit < args.clients + 100:
        sys.exit(f"the open-file hard limit ({limit}) is too low for {args.clients} clients")
    workdir = common.make_workdir()
    backend = common.start_cluster(workdir)
    config = common.pgwarden_config(backend, 10, None)
    config["pool"]["max_client_connections"] = args.clients + 100
    target, proc = common.start_pgwarden(workdir, config)
    asyncio.run(open_clients(target.port, 1, 1))  # the pool and its login parameters exist
    time.sleep(1.0)
    before = rss_kb(proc.pid)
    started = time.monotonic()

    async def run() -> tuple[int, float]:
        writers = await open_clients(target.port, args.clients, args.parallel)
        took = time.monotonic() - started
        await asyncio.sleep(2.0)  # let pgwarden settle (timers, logs)
        after = rss_kb(proc.pid)
        await close_clients(writers)
        return after, took

    after, took = asyncio.run(run())
    per = (after - before) * 1024 / args.clients
    print(f"clients:                 {args.clients} (logged in in {took:.1f} s)")
    print(f"pgwarden RSS, 0 clients: {before / 1024:.1f} MB")
    print(f"pgwarden RSS, N clients: {after / 1024:.1f} MB")
    print(f"per client connection:   {per / 1024:.1f} kB")
    print(f"target (< 200 MB):       {'met' if after < 200 * 1024 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
