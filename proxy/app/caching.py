"""The server's result cache: the answers, a WAL consumer per database bumping table versions, and the catalog reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from proxy.cache.eligible import TABLES_SQL, Catalog, table_problem
from proxy.cache.results import ResultCache
from proxy.cache.versions import CacheUnavailable
from proxy.changes.consumer import ChangeConsumer, ChangeSource
from proxy.config.cache import Cache as CacheConfig
from proxy.config.model import Config
from proxy.ops.stats import Shapes
from proxy.pooling.backend import Target
from proxy.routing.volatility import Volatility, read_volatility
from proxy.session.caching import Caching

log = logging.getLogger("pgwarden.cache")

PUBLICATION = "pgwarden_cache"


class CacheService:
    """Owns the process's `Caching` (what sessions use) and the WAL consumers feeding it."""

    def __init__(self, config: Config, target: Callable[[str, str, bool], Target], shapes: Shapes | None) -> None:
        assert config.cache is not None
        self.config, self.settings, self._target = config, config.cache, target
        self.results = ResultCache(config.cache)
        self.caching = Caching(config.cache, self.results, self.feed, self._read_catalog, shapes)
        self.consumers: dict[str, ChangeConsumer] = {}
        self.results.feeds = lambda: {
            db: (c.healthy(self.caching.bound_s), c.lag_s) for db, c in self.consumers.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    def _login(self, database: str) -> Target:
        user = self.settings.replication_user or self.config.backend_auth.user or "postgres"
        return self._target(database, user, False)

    def feed(self, database: str) -> ChangeConsumer:
        """The database's WAL consumer, started on first use."""
        consumer = self.consumers.get(database)
        if consumer is None:
            target = self._login(database)
            source = ChangeSource(
                host=target.host,
                port=target.port,
                user=target.user,
                database=database,
                password=target.password,
                tables=tuple(self.settings.tables),
                publication=PUBLICATION,
                ddl_trigger=True,
            )
            consumer = self.consumers[database] = ChangeConsumer(
                source,
                on_commit=lambda tables, lsn, _at: self._changed(database, tables, lsn),
                on_resync=lambda: self.results.invalidate(database, "resync"),
                on_ddl=lambda: self._ddl(database),
            )
            self._tasks.append(asyncio.get_running_loop().create_task(consumer.run()))
        return consumer

    async def _changed(self, database: str, tables: frozenset[str], lsn: int) -> None:
        """A commit read from the WAL: the versions of its tables bumped (names without schema)."""
        names = frozenset(t.partition(".")[2] for t in tables)
        try:
            await self.results.changed(database, names, lsn, "wal")
        except CacheUnavailable as exc:  # (the consumer starts a new slot; its resync drops everything)
            self.results.redis_failed(exc)
            raise

    async def _ddl(self, database: str) -> None:
        await self.results.invalidate(database, "ddl")
        self.caching.refresh(database)

    async def _read_catalog(self, database: str) -> tuple[Volatility, Catalog]:
        target = self._target(database, self.config.backend_auth.user or "postgres", False)
        login = {"host": target.host, "port": target.port, "user": target.user, "password": target.password}
        return await read_catalog(self.settings, {**login, "database": database, "ssl": target.tls_context or False})

    async def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self.caching.reread()))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.consumers.values()), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.results.close()


def catalog_of(settings: CacheConfig, rows: list, volatility: Volatility) -> Catalog:
    """The Catalog of one database from TABLES_SQL's rows: listed tables usable, or why not."""
    found = {row["name"]: table_problem(row) for row in rows}
    problems = {name: problem for name, problem in found.items() if problem is not None}
    for name in settings.tables:
        if name not in found:
            problems[name] = f"{name} does not exist"
    usable = frozenset(name for name, problem in found.items() if problem is None)
    return Catalog(usable, problems, volatility)


async def read_catalog(settings: CacheConfig, login: dict) -> tuple[Volatility, Catalog]:
    """One database's function volatility and listed tables (asyncpg connect arguments `login`)."""
    import asyncpg

    conn = await asyncpg.connect(**login, timeout=10)
    try:
        volatility = await read_volatility(conn)
        rows = await conn.fetch(TABLES_SQL, list(settings.tables))
    finally:
        await conn.close()
    return volatility, catalog_of(settings, rows, volatility)


async def explain_cache(config: Config, database: str, sql: str) -> str:
    """`pgwarden explain`'s cache line: whether `sql`'s answer may be cached, by the live catalog, and why."""
    from proxy.cache.eligible import judge

    assert config.cache is not None
    user = config.backend_auth.user or "postgres"
    login = {"host": config.primary.host, "port": config.primary.port, "user": user, "database": database}
    _, catalog = await read_catalog(config.cache, {**login, "password": config.backend_auth.secret()})
    verdict = judge(sql, catalog, config.cache.stable_functions)
    if verdict.tables is None:
        return f"not cached: {verdict.reason}"
    where = "outside a transaction block, or in one begun READ ONLY at READ COMMITTED"
    return f"cached (keyed by the versions of {', '.join(verdict.tables)}); {where}"
