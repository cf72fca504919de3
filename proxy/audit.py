"""The audit trail: one record per statement, login, logout, refusal and reload, HMAC-chained, written off the hot path."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pglast.parser
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("pgwarden.audit")
GENESIS = "0" * 64


class AuditConfig(BaseModel):
    """`audit:` in the proxy config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(Path("audit.jsonl"), description="JSON Lines file (relative to the config file).")
    rotate_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Rotate the file past this size.")
    hmac_key_env: str | None = Field(None, description=(
        "Environment variable with the HMAC-SHA256 chain key; without it the chain is plain "
        "SHA-256 (detects edits, not forgeries by someone who can rewrite the whole file)."))
    log_parameters: bool = Field(False, description="Keep literals and parameter values in the text.")
    on_failure: Literal["block", "drop"] = Field("block", description=(
        "`block`: refuse statements while records cannot be queued; `drop`: run them, count the loss."))
    queue_size: int = Field(10_000, ge=10, description="Records held in memory before on_failure applies.")
    redis_stream: str | None = Field(None, description="Also XADD every record to this Redis Stream.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="The Redis of `redis_stream`.")


class AuditUnavailable(Exception):
    """The trail cannot take a record and on_failure is block: the statement must not run."""


_LITERAL = re.compile(r"'(?:[^']|'')*'|\$([A-Za-z_]\w*)?\$.*?\$\1\$|\b\d+(?:\.\d+)?\b", re.S)


def redact(sql: str) -> str:
    """The statement with every literal replaced by `?` (PostgreSQL's own scanner finds them).

    >>> redact("select * from t where email = 'bob@x.io' and id > 42")
    'select * from t where email = ? and id > ?'
    """
    try:
        tokens = pglast.parser.scan(sql)
    except Exception:  # unscannable text: remove anything that looks like a value
        return _LITERAL.sub("?", sql)
    out, last = [], 0
    for tok in tokens:
        if tok.name in ("SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST"):
            out += (sql[last:tok.start], "?")
            last = tok.end + 1
    out.append(sql[last:])
    return "".join(out)


def chain_value(prev: str, record: dict, key: bytes | None) -> str:
    """The chain value of a record: HMAC (or SHA-256 without key) of the previous one and the record."""
    body = prev.encode() + json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest() if key else hashlib.sha256(body).hexdigest()


class Audit:
    """A bounded queue of records and the task that redacts, chains and writes them."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        key = os.environ.get(config.hmac_key_env or "", "")
        self.key = key.encode() if key else None
        self.queue: deque[dict] = deque()
        self.written = self.dropped = self.failures = 0
        self.last_error = ""
        self._seq, self._prev = 0, GENESIS
        self._file = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._redis = None

    # --- the hot path: non-blocking -----------------------------------------------------

    def offer(self, record: dict) -> bool:
        """Queue a record; False when it cannot be taken and the statement must be refused."""
        if len(self.queue) >= self.config.queue_size or (self.failures and not self._file):
            if self.config.on_failure == "drop":
                self.dropped += 1
                return True
            return False
        record["time"] = time.time()
        self.queue.append(record)
        self._wake.set()
        return True

    def writable(self) -> bool:
        return self._file is not None and len(self.queue) < self.config.queue_size

    @property
    def stats(self) -> dict:
        return {"queued": len(self.queue), "written": self.written, "dropped": self.dropped,
                "failures": self.failures, "last_error": self.last_error}

    # --- the writer ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file and continue its chain; a file that cannot be opened is retried."""
        try:
            self._resume_chain()
            self._open()
        except OSError as exc:
            self.failures += 1
            self.last_error = f"{self.config.path}: {exc.strerror or exc}"
            log.error("audit sink unavailable at start: %s", self.last_error)
        if self.config.redis_stream:
            import redis.asyncio
            self._redis = redis.asyncio.from_url(self.config.redis_url)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write every queued record (a clean stop loses none), then close."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._redis is not None:
            await self._redis.aclose()

    def _open(self) -> None:
        self._file = open(self.config.path, "a", encoding="utf-8")

    def _resume_chain(self) -> None:
        path = self.config.path
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 65536))
                last = f.read().splitlines()[-1]
            try:
                record = json.loads(last)
                self._seq, self._prev = record["seq"], record["chain"]
            except (ValueError, KeyError):
                log.error("audit: the last line of %s is damaged; the chain restarts after it", path)

    async def _run(self) -> None:
        while True:
            if not self.queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                lines = self._write_batch()
                self.failures = 0
                if self._redis is not None:
                    await self._to_stream(lines)
            except OSError as exc:
                self.failures += 1
                self.last_error = f"{self.config.path}: {exc.strerror or exc}"
                log.error("audit sink failing (%s); %d records held", self.last_error, len(self.queue))
                if self._stopping and self.failures > 3:
                    log.error("audit: %d records could not be written at shutdown", len(self.queue))
                    return
                await asyncio.sleep(1)
                self._reopen()

    async def _to_stream(self, lines: list[str]) -> None:
        """The records just written, also to the Redis Stream (a failure there is logged, not fatal:
        the file holds them)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for line in lines:
                    pipe.xadd(self.config.redis_stream, {"record": line})
                await pipe.execute()
        except Exception as exc:  # redis raises its own ConnectionError family
            self.last_error = f"redis stream {self.config.redis_stream}: {exc}"
            log.error("audit: %s", self.last_error)

    def _reopen(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
            self._open()
        except OSError:
            self._file = None

    def _write_batch(self) -> list[str]:
        if self._file is None:
            raise OSError("the audit file is not open")
        lines, seq, prev = [], self._seq, self._prev
        batch = [self.queue[i] for i in range(min(len(self.queue), 500))]
        for raw in batch:
            seq += 1
            record = self._finish(raw, seq)
            prev = record["chain"] = chain_value(prev, record, self.key)
            lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        for _ in batch:
            self.queue.popleft()
        self._seq, self._prev, self.written = seq, prev, self.written + len(batch)
        if self._file.tell() > self.config.rotate_bytes:
            self._rotate()
        return lines

    def _finish(self, raw: dict, seq: int) -> dict:
        record = {"seq": seq, **raw}
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(raw["time"])) + \
            f".{int(raw['time'] * 1000) % 1000:03d}Z"
        sql = raw.get("sql")
        if sql is not None and not self.config.log_parameters:
            record["sql"] = redact(sql)
        rewritten = record.pop("rewritten", None)
        if rewritten:
            record["rewritten_sha256"] = hashlib.sha256(rewritten.encode()).hexdigest()
        return record

    def _rotate(self) -> None:
        path = self.config.path
        self._file.close()
        os.replace(path, path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{self._seq}"))
        self._open()


@dataclass
class Verified:
    """What `verify_files` found: records checked, and the first problem (file:line: what)."""

    records: int
    problem: str | None


def verify_files(paths: list[Path], key: bytes | None) -> Verified:
    """Check the chain across files given oldest first: any edit, deletion or reordering shows."""
    prev, expected_seq, count = None, None, 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                    seq, chain = record.pop("seq"), record.pop("chain")
                except (ValueError, KeyError):
                    return Verified(count, f"{where}: not an audit record (truncated or edited)")
                if expected_seq is not None and seq != expected_seq:
                    return Verified(count, f"{where}: record {seq} where {expected_seq} was expected "
                                           "(a record is missing or out of order)")
                if prev is not None or seq == 1:
                    if chain_value(prev or GENESIS, {"seq": seq, **record}, key) != chain:
                        return Verified(count, f"{where}: record {seq} does not match the chain "
                                               "(edited, or written with another key)")
                prev, expected_seq, count = chain, seq + 1, count + 1
    return Verified(count, None)
