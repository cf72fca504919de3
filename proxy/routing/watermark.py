"""Commit watermarks: the WAL position of the last write each (database, tenant or user) committed, so reads skip replicas behind it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

log = logging.getLogger("pgwarden.routing")

Key = tuple[str, str]  # (database, tenant or user)

# Keep the larger value; expire keys nobody wrote for a day (a replica that far behind is out of rotation anyway).
_ADVANCE = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > old then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return new end
return old
"""


class WatermarkUnavailable(Exception):
    """The shared watermark store could not be read or written: route to the primary."""


class Watermarks:
    """Watermarks in this process, and in Redis when `url` is given (shared by every pgwarden process).

    `local` and `advance_local` are dictionary operations for the hot path. With Redis, `get`
    reads the shared value (the larger of it and the local one) and `advance` stores it before
    the write's answer reaches its client, so a read sent after that answer, through any
    process sharing the Redis, is routed by it.

    >>> marks = Watermarks()
    >>> marks.advance_local(("db", "acme"), 100); marks.advance_local(("db", "acme"), 50)
    >>> marks.local(("db", "acme")), marks.local(("db", "other"))
    (100, 0)
    """

    def __init__(self, url: str | None = None, prefix: str = "pgwarden:watermark:", ttl_s: int = 86400) -> None:
        self.url, self.prefix, self.ttl_s = url, prefix, ttl_s
        self._marks: dict[Key, int] = {}
        self._client: redis.asyncio.Redis | None = None
        self._script: AsyncScript | None = None
        self.failures = 0  # Redis operations that failed (the read went to the primary)

    @property
    def shared(self) -> bool:
        return self.url is not None

    def local(self, key: Key) -> int:
        return self._marks.get(key, 0)

    def advance_local(self, key: Key, lsn: int) -> None:
        if lsn > self._marks.get(key, 0):
            self._marks[key] = lsn

    def _redis(self) -> tuple[redis.asyncio.Redis, AsyncScript]:
        if self._client is None or self._script is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url or "", socket_timeout=1, socket_connect_timeout=1)
            self._client, self._script = client, client.register_script(_ADVANCE)
        return self._client, self._script

    def _name(self, key: Key) -> str:
        return f"{self.prefix}{key[0]}\x00{key[1]}"

    async def get(self, key: Key) -> int:
        """The watermark of `key`: the larger of this process's and the shared one."""
        if self.url is None:
            return self.local(key)
        from redis.exceptions import RedisError

        client, _ = self._redis()
        try:
            value = await client.get(self._name(key))
        except (RedisError, OSError) as exc:
            self.failures += 1
            raise WatermarkUnavailable(str(exc)) from exc
        shared = int(value) if value else 0
        self.advance_local(key, shared)
        return max(shared, self.local(key))

    async def advance(self, key: Key, lsn: int) -> None:
        """Store `lsn` for `key` here and, with Redis, there (raises WatermarkUnavailable if it cannot)."""
        self.advance_local(key, lsn)
        if self.url is None:
            return
        from redis.exceptions import RedisError

        _, script = self._redis()
        try:
            await script(keys=[self._name(key)], args=[lsn, self.ttl_s])
        except (RedisError, OSError) as exc:
            self.failures += 1
            raise WatermarkUnavailable(str(exc)) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
