"""One worker among several (`workers`): its share of the pools, its cancel keys, its control socket."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from proxy.config.model import Config
from proxy.ops.http import PeerReport

if TYPE_CHECKING:
    from proxy.ops.metrics import Metrics

log = logging.getLogger("pgwarden.workers")

# Control requests, one per connection on a worker's Unix socket: a cancel (then the
# 8 bytes of the key), or its report (client count and metrics) for /healthz and /metrics.
CANCEL, REPORT, ADMIN = b"C", b"R", b"A"  # ADMIN: an admin console command (then its length and text)
# What the supervisor relays to every worker (PgBouncer's signals for PAUSE and RESUME).
SIGNALS = {"reload": signal.SIGHUP, "shutdown": signal.SIGTERM, "pause": signal.SIGUSR1, "resume": signal.SIGUSR2}
_MAX_PID = 2**31 - 1


class WorkerTag(logging.Filter):
    """Starts each log line of a worker with its index (the workers share one standard error)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"worker {self.index}: {record.msg}"
        return True


class Served(Protocol):
    """What the control socket asks of this worker's server."""

    def cancel(self, pid: int, secret: int) -> asyncio.Task | None: ...
    def client_count(self) -> int: ...
    @property
    def metrics(self) -> Metrics: ...


def socket_path(rundir: Path, index: int) -> Path:
    return rundir / f"worker-{index}.sock"


def share(total: int, index: int, count: int) -> int:
    """Worker `index`'s part of `total`: equal parts, the first `total % count` workers one more."""
    return total // count + (1 if index < total % count else 0)


class WorkerLink:
    """This worker's place among `count` siblings under the supervisor `supervisor` (a pid)."""

    def __init__(self, index: int, count: int, rundir: Path, supervisor: int) -> None:
        self.index = index
        self.count = count
        self.rundir = rundir
        self.supervisor = supervisor
        self._control: asyncio.AbstractServer | None = None
        self._admin: Callable[[str], bytes] | None = None  # answers a console command here (`start`)
        self._watch: asyncio.Task | None = None

    # --- the config as this worker applies it ------------------------------------------------

    def shaped(self, config: Config) -> Config:
        """The config with this worker's share of pool.size and pool.min_idle (the cap is global)."""
        pool = config.pool
        if config.worker_count() != self.count:
            log.warning("a new number of workers (%d) takes effect only after a restart", config.worker_count())
        if pool.size < self.count:
            raise ValueError(f"pool.size ({pool.size}) is below the {self.count} running workers; restart to change")
        size = share(pool.size, self.index, self.count)
        min_idle = min(size, share(pool.min_idle, self.index, self.count))
        return config.model_copy(update={"pool": pool.model_copy(update={"size": size, "min_idle": min_idle})})

    # --- cancel keys -----------------------------------------------------------------------

    def new_pid(self) -> int:
        """A client key pid that names this worker: pid % count == index (1 <= pid < 2**31 - 1)."""
        return (secrets.randbelow(_MAX_PID // self.count - 1) + 1) * self.count + self.index

    def owner(self, pid: int) -> int:
        return pid % self.count

    def forward_cancel(self, pid: int, secret: int) -> asyncio.Task:
        """Hand a CancelRequest to the worker that issued its key; the task ends once that worker acted."""
        return asyncio.get_running_loop().create_task(self._forward(self.owner(pid), pid, secret))

    async def _forward(self, owner: int, pid: int, secret: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket_path(self.rundir, owner))), 5
            )
            writer.write(CANCEL + struct.pack("!II", pid, secret))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 30)
            writer.close()
        except (TimeoutError, OSError) as exc:
            log.warning("could not hand a cancel request to worker %d: %s", owner, exc)

    # --- the control socket ----------------------------------------------------------------

    async def start(self, server: Served, stop: Callable[[], None], admin: Callable[[str], bytes]) -> None:
        """Answer siblings on this worker's socket (`admin` answers a console command here); stop
        the server if the supervisor goes away."""
        self._admin = admin
        path = socket_path(self.rundir, self.index)
        path.unlink(missing_ok=True)
        self._control = await asyncio.start_unix_server(lambda r, w: self._answer(server, r, w), str(path))
        self._watch = asyncio.get_running_loop().create_task(self._watch_supervisor(stop))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._control is not None:
            self._control.close()
            socket_path(self.rundir, self.index).unlink(missing_ok=True)

    async def _watch_supervisor(self, stop: Callable[[], None]) -> None:
        while os.getppid() == self.supervisor:
            await asyncio.sleep(1)
        log.error("worker %d: the supervisor (pid %d) is gone; stopping", self.index, self.supervisor)
        stop()

    async def _answer(self, server: Served, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            kind = await asyncio.wait_for(reader.readexactly(1), 5)
            if kind == CANCEL:
                pid, secret = struct.unpack("!II", await asyncio.wait_for(reader.readexactly(8), 5))
                task = server.cancel(pid, secret)
                if task is not None:
                    await task
            elif kind == REPORT:
                writer.write(struct.pack("!I", server.client_count()) + server.metrics.exposition())
                await writer.drain()
            elif kind == ADMIN and self._admin is not None:
                size = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 5))[0]
                sql = (await asyncio.wait_for(reader.readexactly(min(size, 4096)), 5)).decode()
                writer.write(self._admin(sql))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("worker %d: control request failed: %s", self.index, exc)
        finally:
            writer.close()

    async def peers(self) -> list[PeerReport]:
        """The other workers' reports (a worker that does not answer within 2 s is left out)."""
        others = [i for i in range(self.count) if i != self.index]
        found = await asyncio.gather(*(self._report(i) for i in others))
        return [r for r in found if r is not None]

    async def gather(self, sql: str) -> list[tuple[int, bytes]]:
        """The other workers' own answers to an admin console command (one that does not answer
        within 2 s is left out)."""
        others = [i for i in range(self.count) if i != self.index]
        request = ADMIN + struct.pack("!I", len(sql.encode())) + sql.encode()
        found = await asyncio.gather(*(self._ask(i, request) for i in others))
        return [(i, body) for i, body in zip(others, found) if body]

    async def _ask(self, index: int, request: bytes) -> bytes:
        """One control request to worker `index`, and all it answers (b"": it did not)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket_path(self.rundir, index))), 2
            )
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 2)
            writer.close()
        except (TimeoutError, OSError) as exc:
            log.warning("worker %d did not answer: %s", index, exc)
            return b""
        return data

    async def _report(self, index: int) -> PeerReport | None:
        data = await self._ask(index, REPORT)
        if len(data) < 4:
            return None
        return PeerReport(index, struct.unpack("!I", data[:4])[0], data[4:])

    # --- commands for every worker ------------------------------------------------------------

    def broadcast(self, command: str) -> None:
        """PAUSE, RESUME, RELOAD, SHUTDOWN: ask the supervisor to signal every worker."""
        try:
            os.kill(self.supervisor, SIGNALS[command])
        except ProcessLookupError:
            log.error("worker %d: the supervisor (pid %d) is gone", self.index, self.supervisor)
