"""The audit trail: HMAC-chained records of statements and sessions, written off the hot path."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.redact import redact, redact_params, statement_kind
from proxy.audit.sinks import FileSink, RedisSink, SinkError
from proxy.config.sections import AuditConfig

log = logging.getLogger("pgwarden.audit")
GENESIS = "0" * 64
BATCH = 2000  # records formed and written at a time
LINGER = 0.01  # seconds the writer waits for a batch to gather before forming it


class AuditError(Exception):
    """The audit trail cannot start as configured (the message says what to fix)."""


class AuditUnavailable(Exception):
    """The trail cannot take a record and on_failure is block: the statement must not run."""


def statement_record(*, log_parameters: bool = False, **fields: Any) -> dict[str, Any]:
    """A statement record: `sql` redacted and `params` hidden unless log_parameters, `kind`
    filled from the text, `rewritten` replaced by its SHA-256.

    >>> r = statement_record(sql="select 1 from t where a = 'x'", params=["s3cret"], user="ann")
    >>> r["sql"], r["params"], r["kind"], r["event"]
    ('select ? from t where a = ?', ['?'], 'select', 'statement')
    """
    record: dict[str, Any] = {"event": "statement", **fields}
    sql = record.get("sql")
    if sql is not None:
        record.setdefault("kind", statement_kind(sql))
    return _finish_fields(record, log_parameters)


def _finish_fields(record: dict[str, Any], log_parameters: bool) -> dict[str, Any]:
    """Apply redaction and hashing once (records built by `statement_record` are marked done)."""
    if record.pop("_finished", False):
        return record
    if record.get("event") == "statement" and record.get("sql") is not None and "kind" not in record:
        record["kind"] = statement_kind(record["sql"])  # (records the writer builds from compact rows)
    if not log_parameters:
        if record.get("sql") is not None:
            record["sql"] = redact(record["sql"])
        if "params" in record:
            record["params"] = redact_params(record["params"])
    rewritten = record.pop("rewritten", None)
    if rewritten:
        record["rewritten_sha256"] = hashlib.sha256(rewritten.encode()).hexdigest()
    record["_finished"] = True
    return record


# --- the chain ----------------------------------------------------------------------------------


def canonical(record: dict[str, Any]) -> str:
    """The one JSON text of a record that the chain covers (sorted keys, no spaces, UTF-8).

    orjson writes it; values orjson refuses (integers past 64 bits, lone surrogates) fall back to
    the standard library, the same way at write and at verify.
    """
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str).decode()
    except (orjson.JSONEncodeError, UnicodeError):  # ASCII-escaped: lone surrogates stay writable
        return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def chain_value(prev: str, record: dict[str, Any], key: bytes | None) -> str:
    """HMAC-SHA256 (SHA-256 without key) of the previous chain value and the record without `chain`."""
    return _chain(prev, canonical(record), key)


def _chain(prev: str, body: str, key: bytes | None) -> str:
    data = prev.encode() + body.encode()
    return hmac.digest(key, data, "sha256").hex() if key else hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _iso(stamp: float) -> str:
    """UTC time with milliseconds (`2026-11-28T09:30:00.123Z`); the seconds part is cached."""
    millis = int(stamp * 1000)
    return f"{_second(millis // 1000)}.{millis % 1000:03d}Z"


# --- the trail ----------------------------------------------------------------------------------


class Audit:
    """A bounded queue of records and the task that redacts, chains and writes them to the sinks.

    `offer` only appends to a deque. The writer takes up to BATCH records, redacts, numbers,
    chains and serialises them, then appends them to the file and the Redis Stream. Records
    leave memory only once every sink has them. The proxy runs this in its writer process
    (proxy/audit/process.py), so file calls block that process, never the proxy.
    """

    def __init__(self, config: AuditConfig, base_dir: Path | None = None) -> None:
        self.config = config
        self.path = config.path if base_dir is None or config.path.is_absolute() else base_dir / config.path
        self.queue: deque[dict[str, Any]] = deque()
        self.written = self.dropped = self.failures = self.failures_total = 0
        self.last_error = ""
        self.key: bytes | None = None
        self._file = FileSink(self.path, config.rotate_bytes, config.rotate_seconds, config.fsync)
        self._redis = (
            RedisSink(config.redis_url, config.redis_stream, config.redis_maxlen) if config.redis_stream else None
        )
        self._formed: list[tuple[int, str]] = []  # chained lines not yet in every sink
        self._seq, self._prev, self._resumed = 0, GENESIS, False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dropped_logged = 0.0

    # --- the hot path ---------------------------------------------------------------------------

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue a record without waiting. True: queued, or (on_failure drop) dropped and counted.
        False: no room, or a sink is failing; the caller must `await put` or refuse."""
        if self.failures or len(self.queue) + len(self._formed) >= self.config.queue_size:
            if self.config.on_failure == "block":
                return False
            self._drop()
            return True
        self.accept(record)
        return True

    def accept(self, record: dict[str, Any]) -> None:
        """Queue a record that was already accepted (by the proxy, for the writer process): never
        refused; the caller bounds what it hands over."""
        if "time" not in record:
            record["time"] = time.time()
        self.queue.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def accept_all(self, records: list[dict[str, Any]]) -> None:
        """`accept` for a batch, in order."""
        now = time.time()
        for record in records:
            if "time" not in record:
                record["time"] = now
        self.queue.extend(records)
        if records and not self._wake.is_set():
            self._wake.set()

    async def put(self, record: dict[str, Any]) -> None:
        """Queue a record, waiting up to block_timeout for room; AuditUnavailable when there is none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.block_timeout
        while not self.offer(record):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AuditUnavailable(
                    f"the audit trail could not take the record within {self.config.block_timeout:g}s: "
                    + (self.last_error or f"its queue is full ({self.config.queue_size} records)")
                )
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged >= 10:
            self._dropped_logged = now
            log.error(
                "audit: dropping records (on_failure: drop); %d dropped so far; %s",
                self.dropped,
                self.last_error or "the queue is full",
            )

    def held(self) -> int:
        """Records queued or formed, not yet in every sink."""
        return len(self.queue) + len(self._formed)

    def form(self, batch: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """Redact, number, time-stamp and chain a batch now (benchmarks: the writer's work per record)."""
        return self._form(batch)

    def writable(self) -> bool:
        """For /readyz: started, sinks healthy, room in the queue."""
        held = len(self.queue) + len(self._formed)
        return self._task is not None and not self.failures and held < self.config.queue_size

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self.queue) + len(self._formed),
            "written": self.written,
            "dropped": self.dropped,
            "failures": self.failures,
            "failures_total": self.failures_total,
            "last_error": self.last_error,
        }

    # --- start and stop -------------------------------------------------------------------------

    async def start(self, *, strict: bool = False) -> None:
        """Open the sinks, continue the chain where the files stop, start the writer.

        A missing HMAC key raises AuditError. A file or Redis that cannot be opened raises
        AuditError when strict; otherwise it is logged ("audit sink unavailable at start"), the
        trail counts as failing (on_failure applies) and the writer retries (backing off to 1 s).
        """
        self.key = self._load_key()
        try:
            await self._open_sinks()
        except SinkError as exc:
            message = self._describe(exc)
            if strict:
                raise AuditError(f"audit sink unavailable: {message}") from exc
            log.error("audit sink unavailable at start: %s", message)
            self._failed(message)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    def _load_key(self) -> bytes | None:
        name = self.config.hmac_key_env
        if name is None:
            return None
        value = os.environ.get(name, "")
        if not value:
            raise AuditError(
                f"audit.hmac_key_env names {name}, but that environment variable is not "
                f"set (or empty): set it to the chain key, or remove audit.hmac_key_env"
            )
        return value.encode()

    async def stop(self) -> None:
        """Write every queued record, then close the sinks. If a sink still fails after
        block_timeout, the records left are written to the process log (never silently lost)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            self._file.close()
        except OSError as exc:
            log.error("audit: closing %s: %s", self.path, exc)
        if self._redis is not None:
            await self._redis.close()

    # --- the writer -----------------------------------------------------------------------------

    async def _run(self) -> None:
        stop_deadline: float | None = None
        backoff = 0.05
        while True:
            if not self._formed and not self.queue:
                if self._stopping:
                    return
                if not self.failures:  # failing: fall through and probe the sinks
                    await self._idle()
                    continue
            try:
                await self._open_sinks()
                if not self._formed and self.queue:
                    if len(self.queue) < BATCH and not self._stopping and not self.failures:
                        await asyncio.sleep(LINGER)  # let a batch gather: one write per many records
                    batch = [self.queue.popleft() for _ in range(min(len(self.queue), BATCH))]
                    self._formed = self._form(batch)
                await self._deliver()
                backoff = 0.05
            except Exception as exc:  # a sink error, or a bug: either way the proxy keeps running
                if not isinstance(exc, SinkError):
                    log.exception("audit writer error")
                self._failed(self._describe(exc))
                if self._stopping:
                    stop_deadline = stop_deadline or time.monotonic() + self.config.block_timeout
                    if time.monotonic() >= stop_deadline:
                        await self._spill()
                        return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _idle(self) -> None:
        """Wait for records; wake every second to rotate a file that is old enough."""
        self._wake.clear()
        timeout = 1.0 if self.config.rotate_seconds else None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        if self._file.due():
            try:
                self._file.rotate()
            except OSError as exc:
                self._failed(self._describe(exc))

    async def _open_sinks(self) -> None:
        """Open what is closed; the chain resumes from the files before the first record."""
        if not self._file.is_open:
            if not self._resumed:
                tail = self._file.tail()
                if tail is not None:
                    self._seq, self._prev = tail
                self._file.last_seq = self._seq
            self._file.open()
            self._resumed = True
        if self._redis is not None and (self._redis.client is None or self.failures):
            await self._redis.open()
            if not self._redis.last_seq:
                self._redis.last_seq = self._seq
        if self.failures and not self._formed and not self.queue:
            self._recovered()  # a probe while nothing waits: the sinks are back

    def _form(self, batch: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """Redact, number, time-stamp and chain a batch."""
        out = []
        seq, prev = self._seq, self._prev
        for raw in batch:
            seq += 1
            try:
                record = _finish_fields(raw, self.config.log_parameters)
            except Exception as exc:  # a caller's bad value must not stop the trail: record that
                record = {"event": "unrecordable", "error": repr(exc), "time": raw.get("time", time.time())}
            record.pop("_finished", None)
            stamp = record["time"]
            record = {**record, "seq": seq, "time": _iso(stamp) if isinstance(stamp, (int, float)) else stamp}
            body = canonical(record)
            prev = _chain(prev, body, self.key)
            out.append((seq, f'{body[:-1]},"chain":"{prev}"}}'))  # `chain` last: verify re-sorts
        self._seq, self._prev = seq, prev
        return out

    async def _deliver(self) -> None:
        """Give every sink the formed records it does not have yet; then they leave memory."""
        if not self._formed:
            return
        last = self._formed[-1][0]
        if self._file.last_seq < last:
            lines = [line for seq, line in self._formed if seq > self._file.last_seq]
            self._file.write(lines, last)
        if self._redis is not None and self._redis.last_seq < last:
            await self._redis.write([(s, line) for s, line in self._formed if s > self._redis.last_seq])
        self.written += len(self._formed)
        self._formed = []
        if self.failures:
            self._recovered()
        self._room.set()

    def _failed(self, message: str) -> None:
        if not self.failures:
            log.error("audit sink failing: %s; %d records held", message, len(self.queue) + len(self._formed))
        self.failures += 1
        self.failures_total += 1
        self.last_error = message

    def _recovered(self) -> None:
        log.warning("audit sink recovered after %d failures", self.failures)
        self.failures = 0
        self._room.set()

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, OSError) and exc.strerror:
            return f"{exc.filename or self.path}: {exc.strerror}"
        where = self._redis.url if self._redis is not None and not isinstance(exc, OSError) else self.path
        return f"{where}: {exc}"

    async def _spill(self) -> None:
        """At stop with a dead sink: every record not written goes to the process log."""
        rest = self._formed + self._form([self.queue.popleft() for _ in range(len(self.queue))])
        log.error(
            "audit: %d records could not be written to the sinks at shutdown (%s); they follow, one per line",
            len(rest),
            self.last_error,
        )
        for _, line in rest:
            log.error("audit record not written: %s", line)
        self._formed = []


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """What `verify_files` found: records checked, the first problem (file:line: what), and the
    seq the chain was checked from (1 unless older files were not given)."""

    ok: bool
    records: int
    first_problem: str | None
    first_seq: int | None = None

    @property
    def problem(self) -> str | None:
        return self.first_problem


def _first_seq(path: Path) -> float:
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.loads(f.readline())["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def verify_files(paths: list[Path], key: bytes | None) -> VerifyResult:
    """Check the chain across files (put in chain order by their first record): an edited,
    deleted, reordered or truncated record, or a missing file, is named by file and line."""
    prev: str | None = None
    expected: int | None = None
    first: int | None = None
    count = 0
    for path in sorted(paths, key=_first_seq):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                    seq, chain = int(record.pop("seq")), record.pop("chain")
                except (ValueError, KeyError, TypeError, AttributeError):
                    return VerifyResult(False, count, f"{where}: not an audit record (truncated or edited)", first)
                if expected is not None and seq != expected:
                    what = (
                        f"record {seq} is out of order or repeated"
                        if seq < expected
                        else f"record {expected} is missing or moved"
                        if seq == expected + 1
                        else f"records {expected} to {seq - 1} are missing"
                    )
                    return VerifyResult(
                        False, count, f"{where}: record {seq} where {expected} was expected ({what})", first
                    )
                if (prev is not None or seq == 1) and chain_value(
                    prev or GENESIS, {"seq": seq, **record}, key
                ) != chain:
                    return VerifyResult(
                        False,
                        count,
                        f"{where}: record {seq} does not match the chain (edited, or written with another key)",
                        first,
                    )
                first = seq if first is None else first
                prev, expected, count = chain, seq + 1, count + 1
    return VerifyResult(True, count, None, first)
