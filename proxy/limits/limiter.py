"""The process's limiter: statement rates (in Redis, shared, or here), and per-process counts of connections and statements in flight."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from proxy.config.limits import Limit, Limits
from proxy.limits.gcra import gcra, most_admitted
from proxy.limits.rules import CONCURRENCY, CONNECTIONS, Applied, Entity

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

log = logging.getLogger("pgwarden.limits")
BACKOFF_S = 1.0  # after Redis fails, rates are decided here this long before Redis is tried again

# KEYS: one bucket per entity; ARGV: n, then interval and burst per key. Redis's clock is the one
# clock of every instance. Returns {admitted, index of the bucket admitting fewest (0: none), retry in µs}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local count, which, retry = n, 0, 0
local bases = {}
for i, key in ipairs(KEYS) do
  local interval, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local base = math.max(tonumber(redis.call('GET', key) or '0'), now)
  bases[i] = base
  local room = math.floor((now + burst * interval - base) / interval + 1e-9)
  if room < count then count, which = math.max(room, 0), i end
end
for i, key in ipairs(KEYS) do
  local interval, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = bases[i] + count * interval
  if count > 0 then
    redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
  end
  if i == which then retry = math.max(0, tat + interval - burst * interval - now) end
end
return {count, which, math.floor(retry * 1000000)}
"""


class Decision(NamedTuple):
    """Statements admitted of those asked; the entity that admitted fewest (None: all admitted)."""

    admitted: int
    limiting: Applied | None
    retry_after: float


@dataclass(slots=True)
class Seen:
    """What this process counted for one entity: rejections by limit, statements in flight, connections."""

    rejections: dict[str, int] = field(default_factory=dict)
    active: int = 0
    connections: int = 0


class Limiter:
    """One per process. Rates: a GCRA bucket per entity, in Redis (`limits.redis`, shared by every
    process and instance) or here (no Redis, or for BACKOFF_S after it failed: each process then
    enforces the full rate on its own). Connections and statements in flight: per process."""

    def __init__(
        self,
        config: Limits,
        on_reject: Callable[[str, str], None] = lambda limit, kind: None,
        on_fallback: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.on_reject, self.on_fallback = on_reject, on_fallback
        self.seen: dict[Entity, Seen] = {}
        self.tats: dict[Entity, float] = {}  # the local buckets
        self.fallbacks = 0
        self._down_until = 0.0
        self._client: redis.asyncio.Redis | None = None
        self._script: AsyncScript | None = None

    def entity(self, entity: Entity) -> Seen:
        seen = self.seen.get(entity)
        if seen is None:
            seen = self.seen[entity] = Seen()
        return seen

    def rejected(self, limit: str, applied: Applied) -> None:
        """Count one rejection (SHOW LIMITS, and the metric by limit and kind)."""
        rejections = self.entity(applied.entity).rejections
        rejections[limit] = rejections.get(limit, 0) + 1
        self.on_reject(limit, applied.entity.kind)

    # --- rates --------------------------------------------------------------------------------

    def shared(self) -> bool:
        """Rates go to Redis now (configured, and not in the backoff after a failure)."""
        return self.config.redis is not None and time.monotonic() >= self._down_until

    def local(self, rated: Sequence[Applied], n: int) -> Decision:
        """Decide here, with a bucket per entity in this process."""
        now = time.monotonic()
        buckets = [(self.tats.get(a.entity, 0.0), _interval(a), a.limit.burst_size()) for a in rated]
        count, which = most_admitted(now, buckets, n)
        for applied, (tat, interval, burst) in zip(rated, buckets):
            if count:
                self.tats[applied.entity] = gcra(now, tat, interval, burst, count).tat
        if which < 0:
            return Decision(count, None, 0.0)
        tat, interval, burst = buckets[which]
        retry = gcra(now, tat, interval, burst, count).retry_after
        return Decision(count, rated[which], retry)

    async def remote(self, rated: Sequence[Applied], n: int) -> Decision:
        """Decide in Redis; when it fails, here (counted as a fallback) and Redis rests for BACKOFF_S."""
        from redis.exceptions import RedisError

        keys = [f"{self.config.key_prefix}rate:{a.entity.kind}:{a.entity.name}" for a in rated]
        args: list[float] = [n]
        for applied in rated:
            args += [_interval(applied), applied.limit.burst_size()]
        try:
            count, which, retry_us = await self._redis()(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            if time.monotonic() >= self._down_until:
                log.warning("limits.redis failed (%s): rates are decided by each process for %gs", exc, BACKOFF_S)
            self._down_until = time.monotonic() + BACKOFF_S
            return self.fallback(rated, n)
        return Decision(int(count), rated[int(which) - 1] if int(which) else None, int(retry_us) / 1e6)

    def fallback(self, rated: Sequence[Applied], n: int) -> Decision:
        """Redis is down: decided here, and counted."""
        self.fallbacks += 1
        self.on_fallback()
        return self.local(rated, n)

    def _redis(self) -> AsyncScript:
        if self._script is None:
            import redis.asyncio

            url = self.config.redis or ""
            self._client = redis.asyncio.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
            self._script = self._client.register_script(_GCRA)
        return self._script

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # --- per-process counts -------------------------------------------------------------------

    def take(self, limit: str, applied: Sequence[Applied]) -> Applied | None:
        """One more connection (CONNECTIONS) or statement in flight (CONCURRENCY) for each entity;
        None when taken, else the entity at its limit (nothing taken, the rejection counted)."""
        for one in applied:
            cap = one.limit.client_connections if limit == CONNECTIONS else one.limit.concurrent_statements
            if cap is not None:
                seen = self.entity(one.entity)
                if (seen.connections if limit == CONNECTIONS else seen.active) >= cap:
                    self.rejected(limit, one)
                    return one
        for one in applied:
            seen = self.entity(one.entity)
            if limit == CONNECTIONS:
                seen.connections += 1
            else:
                seen.active += 1
        return None

    def give(self, limit: str, applied: Sequence[Applied]) -> None:
        """What `take` took, given back."""
        for one in applied:
            seen = self.entity(one.entity)
            if limit == CONNECTIONS:
                seen.connections = max(0, seen.connections - 1)
            else:
                seen.active = max(0, seen.active - 1)

    def rows(self) -> list[list[object]]:
        """SHOW LIMITS: each configured entry, then each entity seen, with its counts."""
        rows: list[list[object]] = []
        config = self.config
        for kind, entries in (("tenant", config.tenants), ("role", config.roles), ("user", config.users)):
            for name, limit in sorted(entries.items()):
                seen = self.seen.get(Entity(kind, name))
                rows.append(_row(kind, name, limit, seen))
        listed = {(r[0], r[1]) for r in rows}
        for entity, seen in sorted(self.seen.items()):
            if (entity.kind, entity.name) not in listed:
                rows.append(_row(entity.kind, entity.name, None, seen))
        return rows


COLUMNS = [
    "kind",
    "name",
    "statements_per_second",
    "burst",
    "concurrent_statements",
    "client_connections",
    "statement_timeout_ms",
    "active",
    "connections",
    "rejections",
]


def _row(kind: str, name: str, limit: Limit | None, seen: Seen | None) -> list[object]:
    cells: list[object] = [kind, name]
    if limit is not None:
        rate = limit.statements_per_second
        cells += [rate, limit.burst_size() if rate else None, limit.concurrent_statements]
        cells += [limit.client_connections, limit.statement_timeout_ms]
    else:
        cells += [None] * 5
    rejections = " ".join(f"{k}={v}" for k, v in sorted(seen.rejections.items())) if seen else ""
    return cells + [seen.active if seen else 0, seen.connections if seen else 0, rejections]


def _interval(applied: Applied) -> float:
    return 1.0 / (applied.limit.statements_per_second or 1.0)


__all__ = ["COLUMNS", "CONCURRENCY", "CONNECTIONS", "Decision", "Limiter", "Seen"]
