"""The server's read replicas: the health monitor, a pool per (replica, database, user), the watermarks, and the primary followed through failovers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, MutableMapping

from proxy.config.model import Config
from proxy.config.model import Pool as PoolSettings
from proxy.pooling.backend import Target
from proxy.pooling.pool import Pool
from proxy.routing.health import ServerState
from proxy.routing.monitor import Monitor
from proxy.routing.volatility import Volatility, read_volatility
from proxy.routing.watermark import Watermarks
from proxy.session.replicas import ReadRouting

log = logging.getLogger("pgwarden.routing")

_REREAD_S = 30.0  # function volatility is read again this often (DDL that bypassed pgwarden)


def wanted(config: Config) -> bool:
    """Read routing runs with `replicas`, or with several primary hosts to follow."""
    return bool(config.replicas or config.primary.hosts)


class Replication:
    """Owns the monitor and the replica pools; the server's `pools` mapping holds them too
    (keyed (database, "user@host:port")), so PAUSE, the janitor, SHOW POOLS and /metrics see them."""

    def __init__(
        self,
        config: Config,
        pools: MutableMapping[tuple[str, str], Pool],
        pool_settings: Callable[[], PoolSettings],
        target: Callable[[str, str, bool], Target],
        paused: Callable[[], bool],
    ) -> None:
        self.config = config
        self._pools, self._pool_settings, self._target, self._paused = pools, pool_settings, target, paused
        self.monitor = Monitor(config, self._primary_moved)
        self.watermarks = Watermarks(config.routing.redis)
        self.routing = ReadRouting(config, self.monitor, self.watermarks, self.replica_pool, self._read_catalog)
        self._reread: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.monitor.start()
        self._reread = asyncio.get_running_loop().create_task(self._reread_loop())

    async def stop(self) -> None:
        if self._reread is not None:
            self._reread.cancel()
        await self.monitor.stop()
        await self.watermarks.close()

    def replica_pool(self, server: ServerState, database: str, user: str, policed: bool) -> Pool:
        key = (database, f"{user}@{server.name}")
        pool = self._pools.get(key)
        if pool is None:
            target = dataclasses.replace(self._target(database, user, policed), host=server.host, port=server.port)
            pool = Pool(f"{database}/{user}@{server.name}", target, self._pool_settings(), policed)
            pool.paused = self._paused()
            self._pools[key] = pool
        return pool

    def primary_pool(self, name: str, target: Target, settings: PoolSettings, policed: bool) -> Pool:
        """A primary pool under read routing: connects retried, a host in recovery refused."""
        return Pool(name, target, settings, policed, retries=self.config.routing.connect_retries, writable=True)

    def _primary_moved(self, server: ServerState) -> None:
        """The monitor found the primary on another host: every primary pool follows it."""
        first = all(
            pool.address == (server.host, server.port) for (_, user), pool in self._pools.items() if "@" not in user
        )
        (log.info if first and not self.monitor.failovers else log.warning)(
            "primary is now %s; new transactions go there", server.name
        )
        for (_, user), pool in self._pools.items():
            if "@" not in user and pool.address != (server.host, server.port):
                pool.retarget(server.host, server.port)

    def reloaded(self, config: Config) -> None:
        """After a reload reset the pools' targets from the file: keep each on its server (a new
        list of replicas or primary hosts takes effect at the next restart)."""
        if (config.replicas, config.primary.hosts) != (self.config.replicas, self.config.primary.hosts):
            log.warning("reload: a new `replicas` or `primary.hosts` list takes effect only after a restart")
        primary = self.monitor.primary
        for (_, user), pool in self._pools.items():
            if "@" in user:
                host, _, port = user.rpartition("@")[2].rpartition(":")
                pool.target = dataclasses.replace(pool.target, host=host, port=int(port))
            elif primary is not None:
                pool.target = dataclasses.replace(pool.target, host=primary.host, port=primary.port)

    async def _read_catalog(self, database: str) -> Volatility:
        import asyncpg

        primary = self.monitor.primary
        target = self._target(database, self.config.backend_auth.user or "postgres", False)
        conn = await asyncpg.connect(
            host=primary.host if primary else target.host,
            port=primary.port if primary else target.port,
            user=target.user,
            password=target.password,
            database=database,
            ssl=target.tls_context or False,
            timeout=self.config.routing.check_timeout * 5,
        )
        try:
            return await read_volatility(conn)
        finally:
            await conn.close()

    async def _reread_loop(self) -> None:
        while True:
            await asyncio.sleep(_REREAD_S)
            for database in {database for database, _ in self._pools}:
                self.routing.refresh(database)
