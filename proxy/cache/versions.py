"""Table versions and the generation that sign a cached answer: in this process, or shared in Redis."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

MISS, CURRENT, FETCHED = 0, 1, 2  # Lookup.found: no current answer; the local one is current; Redis had one

# KEYS: generation, entry, table versions...; ARGV: a generation to start with if there is none (Redis
# restarted empty: every answer signed before is then unreachable), the local entry's signature.
_LOOKUP = """
local gen = redis.call('GET', KEYS[1])
if not gen then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  gen = redis.call('GET', KEYS[1])
end
local parts = {gen}
for i = 3, #KEYS do parts[#parts + 1] = redis.call('GET', KEYS[i]) or '0' end
local sig = table.concat(parts, ',')
if sig == ARGV[2] then return {sig, 1} end
local entry = redis.call('GET', KEYS[2])
if entry and string.sub(entry, 1, #sig + 1) == sig .. '\\n' then return {sig, 2, string.sub(entry, #sig + 2)} end
return {sig, 0}
"""
# KEYS: table versions; ARGV[1]: the commit's LSN as 16 hex digits (compared as text: never lowered).
_BUMP = """
for i = 1, #KEYS do
  local old = redis.call('GET', KEYS[i])
  if not old or old < ARGV[1] then redis.call('SET', KEYS[i], ARGV[1]) end
end
return #KEYS
"""


class CacheUnavailable(Exception):
    """Redis could not be asked: nothing is served from the cache meanwhile."""


class Lookup(NamedTuple):
    signature: str  # the generation and table versions now: an answer read from now on is stored under it
    found: int  # MISS, CURRENT or FETCHED
    answer: bytes | None  # FETCHED: the answer Redis had


def lsn_text(lsn: int) -> str:
    """An LSN as 16 hex digits, so text order is numeric order.

    >>> lsn_text(0x16B3748), lsn_text(0x16B3748) < lsn_text(0x100000000)
    ('00000000016b3748', True)
    """
    return f"{lsn:016x}"


def new_generation() -> str:
    return os.urandom(6).hex()


class LocalVersions:
    """Versions in this process (`cache.redis` omitted): dictionary operations."""

    shared = False

    def __init__(self) -> None:
        self._generation: dict[str, str] = {}
        self._versions: dict[tuple[str, str], str] = {}
        self._signatures: dict[tuple[str, tuple[str, ...]], str] = {}  # until the next bump or rotation

    def signature(self, database: str, tables: tuple[str, ...]) -> str:
        signature = self._signatures.get((database, tables))
        if signature is None:
            gen = self._generation.get(database)
            if gen is None:
                gen = self._generation[database] = new_generation()
            versions = self._versions
            signature = ",".join([gen, *(versions.get((database, t), "0") for t in tables)])
            if len(self._signatures) >= 10_000:
                self._signatures.clear()
            self._signatures[(database, tables)] = signature
        return signature

    def bump(self, database: str, tables: frozenset[str], lsn: int) -> None:
        self._signatures.clear()
        text = lsn_text(lsn)
        for table in tables:
            key = (database, table)
            if self._versions.get(key, "") < text:
                self._versions[key] = text

    def rotate(self, database: str) -> None:
        self._signatures.clear()
        self._generation[database] = new_generation()


class RedisVersions:
    """Versions and answers in Redis (`cache.redis`), shared by every pgwarden process and instance.

    Each call is one round trip (a Lua script for lookups and bumps); any failure raises
    CacheUnavailable. An answer is stored with its signature in front: it is served only while the
    signature is still the current one, so a bump or a new generation makes it unreachable at once.
    """

    shared = True

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._client: redis.asyncio.Redis | None = None
        self._bump: AsyncScript | None = None
        self._lookup_sha: str | None = None
        self._queue: list[tuple[list[str], list[str], asyncio.Future[list[bytes]]]] = []  # lookups of this turn

    def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._client = client
            self._bump = client.register_script(_BUMP)
        return self._client

    def _gen(self, database: str) -> str:
        return f"{self.prefix}{database}:gen"

    def _table(self, database: str, table: str) -> str:
        return f"{self.prefix}{database}:v:{table}"

    def entry_key(self, digest: str) -> str:
        return f"{self.prefix}e:{digest}"

    async def lookup(self, database: str, tables: tuple[str, ...], digest: str, local: str) -> Lookup:
        """The current signature, and the answer when Redis has a current one (CacheUnavailable if it
        cannot be asked). Lookups made in the same turn of the event loop go in one pipeline."""
        keys = [self._gen(database), self.entry_key(digest), *(self._table(database, t) for t in tables)]
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, [new_generation(), local], future))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        reply = await future
        sig = reply[0].decode()
        return Lookup(sig, int(reply[1]), reply[2] if len(reply) > 2 else None)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        asyncio.get_running_loop().create_task(self._ask(batch))

    async def _ask(self, batch: list[tuple[list[str], list[str], asyncio.Future[list[bytes]]]]) -> None:
        from redis.exceptions import NoScriptError

        client = self._redis()
        try:
            for _ in range(2):  # (a Redis restarted meanwhile forgot the script: loaded again, once)
                if self._lookup_sha is None:
                    self._lookup_sha = await client.script_load(_LOOKUP)
                pipe = client.pipeline(transaction=False)
                for keys, args, _ in batch:
                    pipe.evalsha(self._lookup_sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
                if not any(isinstance(r, NoScriptError) for r in replies):
                    break
                self._lookup_sha = None
        except Exception as exc:  # (Redis failing, or anything else: the lookups fail closed, never hang)
            replies = [exc] * len(batch)
        for (_, _, future), reply in zip(batch, replies):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(CacheUnavailable(str(reply)))
            else:
                future.set_result(reply)

    async def store(self, digest: str, signature: str, answer: bytes, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis().set(
                self.entry_key(digest), signature.encode() + b"\n" + answer, px=max(1, int(ttl_s * 1000))
            )
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def bump(self, database: str, tables: frozenset[str], lsn: int) -> None:
        self._redis()
        assert self._bump is not None
        await self._call(self._bump, [self._table(database, t) for t in sorted(tables)], [lsn_text(lsn)])

    async def rotate(self, database: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis().set(self._gen(database), new_generation())
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def _call(self, script: AsyncScript, keys: list[str], args: list[str]) -> list[bytes]:
        from redis.exceptions import RedisError

        try:
            return cast("list[bytes]", await script(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
