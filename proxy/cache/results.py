"""The process's result cache: answers looked up and stored by key under their tables' current versions; the counters."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.cache.lru import Answers
from proxy.cache.versions import CURRENT, FETCHED, CacheUnavailable, LocalVersions, RedisVersions
from proxy.config.cache import Cache as CacheConfig

log = logging.getLogger("pgwarden.cache")

_WARN_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Miss:
    """A lookup that found no current answer: what storing the answer the backend gives needs."""

    database: str
    key: tuple[object, ...]
    signature: str  # read before the statement ran: a write committed meanwhile makes it stale at once


@dataclass(slots=True)
class Counters:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # answers not stored, by why
    invalidations: dict[str, int] = field(default_factory=dict)  # by source: proxy, wal, ddl, resync, timeout
    fail_closed: dict[str, int] = field(default_factory=dict)  # lookups not served, by why: redis, wal
    redis_down_since: float | None = None


class ResultCache:
    """Answers by key: in memory (`Answers`), and in Redis with `cache.redis`. The signature of an
    answer is the database's generation and the versions of the tables it read; a write bumps the
    versions (`changed`), anything that cannot say which tables changed starts a new generation
    (`invalidate`). A lookup is served only under the signature current at that moment."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.answers = Answers(config.max_bytes)
        self.local = LocalVersions()
        self.shared = RedisVersions(config.redis, config.key_prefix) if config.redis else None
        self.counters = Counters()
        self._warned = -_WARN_EVERY_S
        # per database: (answers served, the WAL consumer's lag in seconds); set by the server
        self.feeds: Callable[[], dict[str, tuple[bool, float]]] = dict

    # --- lookups ------------------------------------------------------------------------------

    def lookup_local(self, database: str, tables: tuple[str, ...], key: tuple[object, ...]) -> bytes | Miss:
        """Without Redis: the current answer, or the Miss to store one under."""
        signature = self.local.signature(database, tables)
        entry = self.answers.get(key)
        if entry is not None and entry.signature == signature:
            self.counters.hits += 1
            return entry.answer
        self.counters.misses += 1
        return Miss(database, key, signature)

    async def lookup(self, database: str, tables: tuple[str, ...], key: tuple[object, ...]) -> bytes | Miss | None:
        """With Redis: the current answer, the Miss to store one under, or None (Redis failed: not served, not stored)."""
        assert self.shared is not None
        entry = self.answers.get(key)
        try:
            found = await self.shared.lookup(database, tables, digest(key), entry.signature if entry else "")
        except CacheUnavailable as exc:
            self.redis_failed(exc)
            return None
        self.counters.redis_down_since = None
        if found.found == CURRENT and entry is not None:
            self.counters.hits += 1
            return entry.answer
        if found.found == FETCHED and found.answer is not None:
            self.answers.put(key, found.signature, found.answer, self.config.ttl_s)
            self.counters.hits += 1
            return found.answer
        self.counters.misses += 1
        return Miss(database, key, found.signature)

    async def store(self, miss: Miss, answer: bytes) -> None:
        """Keep `answer` under the signature its lookup read."""
        if len(answer) > self.config.max_result_bytes:
            self.skip("too large")
            return
        self.counters.stores += 1
        self.answers.put(miss.key, miss.signature, answer, self.config.ttl_s)
        if self.shared is not None:
            try:
                await self.shared.store(digest(miss.key), miss.signature, answer, self.config.ttl_s)
            except CacheUnavailable as exc:
                self.redis_failed(exc)

    def skip(self, why: str) -> None:
        self.counters.skipped[why] = self.counters.skipped.get(why, 0) + 1

    def not_served(self, why: str) -> None:
        self.counters.fail_closed[why] = self.counters.fail_closed.get(why, 0) + 1

    def redis_failed(self, exc: Exception) -> None:
        self.not_served("redis")
        if self.counters.redis_down_since is None:
            self.counters.redis_down_since = time.monotonic()
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning("cache.redis failed (%s): answers come from PostgreSQL until it is back", exc)

    # --- invalidation -------------------------------------------------------------------------

    async def changed(self, database: str, tables: frozenset[str], lsn: int, source: str) -> None:
        """A commit at `lsn` changed `tables` (names without schema): their answers are stale from now on.
        Raises CacheUnavailable when Redis cannot take the bump (the WAL consumer then starts again)."""
        self._count(source)
        self.local.bump(database, tables, lsn)
        if self.shared is not None:
            await self.shared.bump(database, tables, lsn)

    async def invalidate(self, database: str, source: str) -> None:
        """Every answer of `database` stale at once (DDL, a GRANT, a lost stretch of the WAL).
        Raises CacheUnavailable when Redis cannot take it."""
        self._count(source)
        self.local.rotate(database)
        if self.shared is not None:
            await self.shared.rotate(database)

    def _count(self, source: str) -> None:
        self.counters.invalidations[source] = self.counters.invalidations.get(source, 0) + 1

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def digest(key: tuple[object, ...]) -> str:
    """The Redis name of a key (the same in every process)."""
    return hashlib.sha1(repr(key).encode(), usedforsecurity=False).hexdigest()
