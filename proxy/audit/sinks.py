"""Where audit records go: a JSON Lines file rotated by size and age, and a Redis Stream."""

from __future__ import annotations

import json
import os
import time
from io import BufferedRandom
from pathlib import Path

import redis.asyncio
from redis.exceptions import RedisError

TAIL_BYTES = 1 << 20
SinkError = (OSError, RedisError)


def rotated_files(path: Path) -> list[Path]:
    """The rotated siblings of an audit file, oldest first (`audit.jsonl.<UTC time>.<last seq>`)."""
    return sorted(path.parent.glob(path.name + ".*"))


def last_record(path: Path) -> tuple[int, str] | None:
    """(seq, chain) of the last intact record in a file; None when it holds none."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        lines = f.read().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
            return int(record["seq"]), str(record["chain"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class FileSink:
    """Appends batches of lines; rotates past `rotate_bytes`, or `rotate_seconds` after the file's
    first record. Its methods block: the writer runs in its own process (proxy/audit/process.py)."""

    def __init__(self, path: Path, rotate_bytes: int, rotate_seconds: float | None, fsync: bool) -> None:
        self.path = path
        self.rotate_bytes, self.rotate_seconds, self.fsync = rotate_bytes, rotate_seconds, fsync
        self._file: BufferedRandom | None = None
        self._opened = 0.0
        self.last_seq = 0

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def tail(self) -> tuple[int, str] | None:
        """Where the chain stops: the last record of the file, else of the newest rotated file."""
        for candidate in [self.path, *reversed(rotated_files(self.path))]:
            if candidate.exists() and candidate.stat().st_size:
                found = last_record(candidate)
                if found is not None:
                    return found
        return None

    def open(self) -> None:
        """Open for appending; a last line cut short by a crash is ended so it stays on its own
        line (and `verify` names it)."""
        f = open(self.path, "a+b")
        try:
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        except OSError:
            f.close()
            raise
        self._file, self._opened = f, time.monotonic()

    def write(self, lines: list[str], last_seq: int) -> None:
        """Append lines (one record each) and flush them to the OS; fsync when configured."""
        if self._file is None:
            self.open()
        assert self._file is not None
        if not self._file.tell():
            self._opened = time.monotonic()  # a file's age counts from its first record
        try:
            self._file.write(("\n".join(lines) + "\n").encode())
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._abandon()
            raise
        self.last_seq = last_seq
        if self.due():
            self.rotate()

    def due(self) -> bool:
        """True when the open file is past its size or age limit (and holds something)."""
        if self._file is None or not self._file.tell():
            return False
        too_old = self.rotate_seconds is not None and time.monotonic() - self._opened >= self.rotate_seconds
        return too_old or self._file.tell() >= self.rotate_bytes

    def rotate(self) -> None:
        """fsync and close the file, rename it `<name>.<UTC time>.<last seq>`, open a new one."""
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{stamp}.{self.last_seq:012d}"))
        self.open()

    def _abandon(self) -> None:
        """Drop a handle that failed; the next write reopens (and ends any half-written line)."""
        assert self._file is not None
        try:
            self._file.close()
        except OSError:
            pass
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._file = None


class RedisSink:
    """XADDs each record to a stream as fields `seq` and `record` (the JSON line), one pipeline
    per batch. A batch retried after a partial failure can repeat entries: readers dedupe by seq."""

    def __init__(self, url: str, stream: str, maxlen: int | None) -> None:
        self.url, self.stream, self.maxlen = url, stream, maxlen
        self.client: redis.asyncio.Redis | None = None
        self.last_seq = 0

    async def open(self) -> None:
        if self.client is None:
            self.client = redis.asyncio.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        await self.client.ping()

    async def write(self, records: list[tuple[int, str]]) -> None:
        assert self.client is not None
        pipe = self.client.pipeline(transaction=False)
        for seq, line in records:
            pipe.xadd(
                self.stream, {"seq": seq, "record": line}, maxlen=self.maxlen, approximate=self.maxlen is not None
            )
        await pipe.execute()
        self.last_seq = records[-1][0]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
