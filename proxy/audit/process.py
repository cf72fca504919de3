"""The audit trail in its own process: the proxy hands records over a pipe; a child redacts, chains and writes them.

Forming a record (redaction, HMAC chain, JSON) costs several microseconds of Python; in the
proxy's process that time comes out of every statement's budget, and a writer thread only moves
it behind the GIL. So the proxy keeps the cheap half (queue one small tuple per statement and one
per round trip, serialise a batch with orjson, write it to a pipe) and a child process
`python -m proxy.audit.process` makes the records (proxy/audit/rows.py) and runs the `Audit`
writer of proxy/audit/trail.py on its own core.

Protocol: one JSON array per line on the child's stdin, of records (objects) and round trips
(arrays: a `Finished` of proxy/audit/rows.py, one record per statement, in order); one JSON status object per
line on its stdout (`{"started": true}` or `{"error": ...}` first, then the writer's stats).
Back-pressure is the pipe: a child whose queue is full stops reading. The child ignores SIGINT,
SIGTERM and SIGHUP and stops when its stdin closes, after writing (or spilling to the log)
everything it was given.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from proxy.audit.rows import Entry, Finished, count, expand, plain
from proxy.audit.trail import Audit, AuditError
from proxy.config.logs import setup_logging
from proxy.config.sections import AuditConfig

log = logging.getLogger("pgwarden.audit")
BATCH = 2000  # records per line on the pipe
LINGER = 0.01  # seconds the sender lets a batch gather
STATUS_EVERY = 0.1  # seconds between the child's status lines
RESTART_AFTER = 1.0  # seconds before a child that died is started again
GC_THRESHOLD = 100_000  # the child's gen-0 threshold (Python's default: 700)
Queued = dict[str, Any] | Finished  # what the proxy queues: a whole record, or a round trip's statements
_STATS = ("queued", "written", "dropped", "failures", "failures_total", "last_error")


def encode_batch(records: Sequence[Queued]) -> bytes:
    """One line of JSON for the pipe (a `Finished` as an array); records orjson refuses (lone
    surrogates from a client's undecodable bytes, integers past 64 bits) go through the standard
    library, ASCII-escaped."""
    try:
        return orjson.dumps(records, default=plain) + b"\n"
    except (orjson.JSONEncodeError, UnicodeError):
        return json.dumps(records, default=str, separators=(",", ":")).encode() + b"\n"


def decode_batch(line: bytes) -> list[dict[str, Any]]:
    """The records of one line from the pipe (a `Finished` becomes its statements' records)."""
    try:
        entries: list[Entry] = orjson.loads(line)
    except orjson.JSONDecodeError:
        entries = json.loads(line)
    return [record for entry in entries for record in expand(entry)]


class AuditProcess:
    """The proxy's side: the same interface as `Audit` (offer, stats, writable, start, stop)."""

    def __init__(self, config: AuditConfig, log_format: str = "text", log_level: str = "info") -> None:
        self.config = config
        self.queue: deque[Queued] = deque()
        self.held = 0  # records in the queue (a `Finished` holds one per statement)
        self.dropped = 0
        self.sent = 0
        self._child: dict[str, Any] = {"received": 0, **dict.fromkeys(_STATS, 0), "last_error": "", "writable": False}
        self._before = {"written": 0, "dropped": 0, "failures_total": 0}  # counts of children gone
        self._argv = [sys.executable, "-m", "proxy.audit.process", config.model_dump_json(), log_format, log_level]
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._dead = ""  # why the child is not running ("" while it is)
        self._dropped_logged = 0.0

    # --- the hot path ---------------------------------------------------------------------------

    def offer(self, record: Queued, force: bool = False) -> bool:
        """Queue a record (or a round trip's `Finished` statements) without waiting; False (block)
        or dropped-and-counted (drop) when the trail is failing or holds queue_size records.
        `force`: the statement ran (or was refused) already, so its record is kept whatever the
        state; the queue may then hold more than queue_size by the statements in flight."""
        if not force and not self.accepting():
            if self.config.on_failure == "block":
                return False
            self.drop()
            return True
        if self.held >= 2 * self.config.queue_size:  # a long outage: never unbounded
            self.dropped += count(record)
            log.error(
                "audit record not written (the trail holds %d records): %s",
                self.held,
                encode_batch([record]).decode().strip(),
            )
            return True
        if isinstance(record, dict):
            if "time" not in record:
                record["time"] = time.time()
            self.held += 1
        else:
            self.held += len(record.started)
        self.queue.append(record)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def accepting(self) -> bool:
        """True when `offer` would queue a record now."""
        return not self._failing() and self.held < self.config.queue_size

    async def room(self, timeout: float) -> bool:
        """Wait up to timeout for the trail to accept records again."""
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _failing(self) -> bool:
        return bool(self._dead or self._child["failures"])

    def drop(self) -> None:
        """Count (and now and then log) a record not kept (on_failure: drop)."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged >= 10:
            self._dropped_logged = now
            log.error(
                "audit: dropping records (on_failure: drop); %d dropped so far; %s",
                self.dropped,
                self._dead or self._child["last_error"] or "the queue is full",
            )

    @property
    def stats(self) -> dict[str, Any]:
        child = self._child
        in_pipe = max(0, self.sent - child["received"])
        before = self._before
        return {
            "queued": self.held + in_pipe + child["queued"],
            "written": before["written"] + child["written"],
            "dropped": self.dropped + before["dropped"] + child["dropped"],
            "failures": child["failures"] + (1 if self._dead else 0),
            "failures_total": before["failures_total"] + child["failures_total"],
            "last_error": self._dead or child["last_error"],
        }

    def writable(self) -> bool:
        """For /readyz: the child runs, its sinks are healthy, there is room."""
        return (
            self._proc is not None
            and not self._failing()
            and bool(self._child["writable"])
            and self.stats["queued"] < self.config.queue_size
        )

    # --- start and stop -------------------------------------------------------------------------

    async def start(self, *, strict: bool = False) -> None:
        """Start the child and wait for it to open its sinks (AuditError as `Audit.start` raises it)."""
        await self._spawn(strict)
        self._sender = asyncio.get_running_loop().create_task(self._send(), name="audit-sender")

    async def _spawn(self, strict: bool) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            "strict" if strict else "lenient",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        first = await self._proc.stdout.readline()
        hello = json.loads(first) if first.strip() else {"error": "the audit writer process exited at start"}
        if "error" in hello:
            await self._proc.wait()
            self._proc = None
            raise AuditError(hello["error"])
        self._child.update(hello)
        self._dead, self.sent = "", 0
        self._reader = asyncio.get_running_loop().create_task(self._read(self._proc), name="audit-status")

    async def stop(self) -> None:
        """Hand every queued record to the child, close its stdin and wait for it to finish."""
        self._stopping = True
        self._wake.set()
        if self._sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), self.config.block_timeout + 10)
            except (TimeoutError, Exception):  # a writer that no longer reads: give up on it
                self._sender.cancel()
            self._sender = None
        if self.queue:
            log.error(
                "audit: %d records could not be handed to the writer at shutdown (%s); they follow, one per line",
                self.held,
                self._dead or "it stopped reading",
            )
            for record in decode_batch(encode_batch(list(self.queue))):
                log.error("audit record not written: %s", encode_batch([record]).decode().strip())
            self.queue.clear()
            self.held = 0
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), self.config.block_timeout + 30)
        except TimeoutError:
            log.error("audit: the writer process did not finish in time; killed")
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader

    # --- the sender and the status reader -------------------------------------------------------

    async def _send(self) -> None:
        while True:
            if self._proc is None:
                if self._stopping:
                    return
                await self._respawn()
                continue
            if not self.queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.held < BATCH and not self._stopping:
                await asyncio.sleep(LINGER)
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), BATCH))]
            records = sum(map(count, batch))
            self.held -= records
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(encode_batch(batch))
                self.sent += records
                await self._proc.stdin.drain()
            except (ConnectionError, AssertionError, OSError, RuntimeError):  # the child went away
                self.queue.extendleft(reversed(batch))  # not delivered: keep them for the next child
                self.held += records
                await asyncio.sleep(0.05)

    async def _respawn(self) -> None:
        await asyncio.sleep(RESTART_AFTER)
        try:
            await self._spawn(strict=False)
            log.warning("audit: writer process started again")
        except (AuditError, OSError) as exc:
            self._dead = f"the audit writer process cannot start: {exc}"

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                self._child.update(json.loads(line))
            except ValueError:
                log.error("audit: unexpected output from the writer process: %r", line[:200])
        code = await proc.wait()
        if self._stopping and code == 0:
            return
        lost = max(0, self.sent - self._child["written"] - self._child["dropped"])
        self._dead = f"the audit writer process exited with code {code}"
        log.error(
            "audit: %s; up to %d records handed to it may be missing from the trail; restarting it", self._dead, lost
        )
        self._before["written"] += self._child["written"]
        self._before["dropped"] += self._child["dropped"] + lost
        self._before["failures_total"] += self._child["failures_total"] + 1
        self._child.update(dict.fromkeys(_STATS, 0), received=0, last_error="", writable=False)
        self._proc = None
        self._wake.set()


# --- the child ----------------------------------------------------------------------------------


async def _child(config: AuditConfig, strict: bool) -> int:
    audit = Audit(config)
    out = sys.stdout.buffer
    try:
        await audit.start(strict=strict)
    except AuditError as exc:
        out.write(json.dumps({"error": str(exc)}).encode() + b"\n")
        out.flush()
        return 2
    received = 0

    def status() -> None:
        try:
            out.write(
                json.dumps(
                    {**audit.stats, "received": received, "writable": audit.writable()}, separators=(",", ":")
                ).encode()
                + b"\n"
            )
            out.flush()
        except OSError:  # the proxy is gone: keep writing the trail, stop reporting
            pass

    out.write(b'{"started":true}\n')
    status()
    gc.freeze()  # what start-up made stays: collections no longer walk it
    gc.set_threshold(GC_THRESHOLD)  # records hold no cycles: collect rarely (a tenth of the CPU at 10,000/s)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    ticker = loop.create_task(_tick(status, stdin, os.getppid()))
    try:
        while line := await stdin.readline():
            if not line.endswith(b"\n"):  # the proxy died in the middle of a write
                log.error(
                    "audit: the proxy's last batch was cut short (%d bytes); the records in it "
                    "are missing from the trail",
                    len(line),
                )
                break
            records = decode_batch(line)
            received += len(records)
            room = max(0, 2 * config.queue_size - audit.held())
            if config.on_failure == "drop":
                for record in records[:room]:
                    audit.offer(record)
            else:
                audit.accept_all(records[:room])
            for record in records[room:]:  # sinks down for long: spill
                audit.dropped += 1
                log.error("audit record not written (the writer holds too many): %s", json.dumps(record, default=str))
    finally:
        ticker.cancel()
        await audit.stop()
        status()
    return 0


async def _tick(status: Callable[[], None], stdin: asyncio.StreamReader, parent: int) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY)
        status()
        if os.getppid() != parent:  # the proxy is gone without closing the pipe: finish
            stdin.feed_eof()
            return


def main(argv: list[str]) -> int:
    config_json, log_format, log_level, mode = argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the proxy decides when the trail stops: by closing stdin
    setup_logging(log_level, log_format)
    config = AuditConfig.model_validate_json(config_json)
    try:
        import uvloop

        return uvloop.run(_child(config, mode == "strict"))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_child(config, mode == "strict"))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
