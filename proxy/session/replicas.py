"""Read routing for the process and for one session: which pool takes a transaction, and the commit watermark taken after a write."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

from proxy.config.model import Config
from proxy.ops.stats import literal_key
from proxy.pooling.pool import Pool
from proxy.routing import balance
from proxy.routing.health import ServerState
from proxy.routing.monitor import Monitor
from proxy.routing.volatility import ReadClassifier, Volatility
from proxy.routing.watermark import Key, Watermarks, WatermarkUnavailable
from proxy.session import routes
from proxy.session.state import SessionState
from proxy.session.statements import Statements

log = logging.getLogger("pgwarden.routing")

_WARN_EVERY_S = 10.0  # a Redis outage warns this often at most (pgwarden_watermark_store_failures_total counts all)


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a transaction runs: a pool, and the replica behind it (None: the primary)."""

    pool: Pool
    server: ServerState | None
    block: bool = False  # begins a READ ONLY transaction block
    refused: str | None = None  # no replica is usable and routing.reads_on_primary is false: why


class ReadRouting:
    """The process's read routing: the monitor's view of the servers, the watermarks, a read
    classifier per database (fed by its live catalog) and a pool per (replica, database, user)."""

    def __init__(
        self,
        config: Config,
        monitor: Monitor,
        watermarks: Watermarks,
        replica_pool: Callable[[ServerState, str, str, bool], Pool],
        read_catalog: Callable[[str], Awaitable[Volatility]],
    ) -> None:
        self.config, self.settings = config, config.routing
        self.monitor, self.watermarks = monitor, watermarks
        self.replica_pool, self._read_catalog = replica_pool, read_catalog
        self._classifiers: dict[str, ReadClassifier] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self.routed = {"primary": 0, "replica": 0}
        self._warned_at = -_WARN_EVERY_S

    def warn(self, text: str, exc: Exception) -> None:
        """A warning about the shared watermarks, at most every _WARN_EVERY_S seconds."""
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(text, exc)

    def classifier(self, database: str) -> ReadClassifier:
        """The database's classifier (judging nothing read-only until its catalog is read)."""
        classifier = self._classifiers.get(database)
        if classifier is None:
            classifier = self._classifiers[database] = ReadClassifier(None, shape_key=literal_key)
            self.refresh(database)
        return classifier

    async def ready(self, database: str) -> None:
        """Wait for the database's first catalog read (a login waits, so its first reads can go to
        replicas; if the read fails, reads stay on the primary until one succeeds)."""
        self.classifier(database)
        task = self._loading.get(database)
        if task is not None:
            await asyncio.shield(task)

    def refresh(self, database: str) -> None:
        """Read the database's function volatility again (after DDL; at most one read at a time)."""
        if database in self._loading:
            return
        self._loading[database] = asyncio.get_running_loop().create_task(self._load(database))

    async def _load(self, database: str) -> None:
        try:
            volatility = await self._read_catalog(database)
        except Exception as exc:  # (any failure: the classifier keeps what it had, reads stay on the primary)
            log.warning("cannot read function volatility of database %r: %s", database, exc)
        else:
            self._classifiers[database] = ReadClassifier(volatility, shape_key=literal_key)
        finally:
            del self._loading[database]


class SessionRoute:
    """One transaction-pooled session's routing: `choose` a pool for a batch that needs a backend,
    and after a write on the primary, take its WAL position as the watermark (`taken`)."""

    def __init__(
        self,
        routing: ReadRouting,
        state: SessionState,
        names: Statements,
        primary: Pool,
        tenant: Callable[[], str | None],
        policed: bool,
    ) -> None:
        self.routing, self.state, self.names = routing, state, names
        self.primary, self.tenant, self.policed = primary, tenant, policed
        self.on_primary = Choice(primary, None)
        self.server: ServerState | None = None  # the replica serving the session now (None: the primary or none)
        self.force_primary = False  # the next batch goes to the primary (a replica refused it)
        self.block = False  # the replica's backend is in a READ ONLY transaction block: all batches join it

    def key(self) -> Key:
        return (self.state.database, self.tenant() or self.state.user)

    def judge(self, msgs: list[tuple[int, bytes]]) -> routes.BatchRoute:
        """Whether this batch may run on a replica (also the session's `SET pgwarden.route`)."""
        if self.force_primary:
            self.force_primary = False
            return routes.BatchRoute(False, "a replica refused it")
        judged = routes.judge_batch(msgs, self.names, self.routing.classifier(self.state.database))
        route = routes.session_route(self.state.settings, self.routing.settings.default)
        if route == routes.PRIMARY and judged.read:
            return routes.BatchRoute(False, "SET pgwarden.route = 'primary'", writes=False)
        if route == routes.REPLICA and not judged.reason.startswith("pgwarden:primary"):
            return routes.BatchRoute(True, "SET pgwarden.route = 'replica'", block=judged.block)
        return judged

    def choose(self, msgs: list[tuple[int, bytes]], watermark: int | None = None) -> Choice | None:
        """The pool for this batch; None when the shared watermark must be read first (`choose_async`)."""
        judged = self.judge(msgs)
        if not judged.read:
            self.state.wrote = self.state.wrote or judged.writes
            return self.on_primary
        routing = self.routing
        if watermark is None:
            if not routing.settings.read_your_writes:
                watermark = 0
            elif routing.watermarks.shared:
                return None
            else:
                watermark = routing.watermarks.local(self.key())
        return self._replica(watermark, judged.block)

    async def choose_async(self, msgs: list[tuple[int, bytes]]) -> Choice:
        choice = self.choose(msgs)
        if choice is not None:
            return choice
        try:
            watermark = await self.routing.watermarks.get(self.key())
        except WatermarkUnavailable as exc:
            self.routing.warn("shared watermarks unavailable (%s): reads go to the primary", exc)
            return self.on_primary
        choice = self.choose(msgs, watermark)
        assert choice is not None
        return choice

    def _replica(self, watermark: int, block: bool) -> Choice:
        monitor = self.routing.monitor
        server = balance.choose(monitor.replicas, watermark)
        if server is None:
            behind = bool(watermark) and balance.behind(monitor.replicas, watermark)
            if behind:
                monitor.poke()  # a replica may have caught up since its last check
            elif not self.routing.settings.reads_on_primary:
                return Choice(self.primary, None, refused="no replica is usable")
            return self.on_primary
        pool = self.routing.replica_pool(server, self.state.database, self.primary.target.user, self.policed)
        return Choice(pool, server, block)

    # --- lease bookkeeping --------------------------------------------------------------------

    def linked(self, choice: Choice) -> None:
        self.server, self.block = choice.server, choice.block
        self.routing.routed["replica" if choice.server else "primary"] += 1
        if choice.server is not None:
            choice.server.outstanding += 1
            choice.server.routed += 1

    def released(self) -> None:
        self.block = False
        if self.server is not None:
            self.server.outstanding -= 1
            self.server = None

    def fits(self, msgs: list[tuple[int, bytes]]) -> bool:
        """May this batch join the linked backend? Always on the primary (then counted as a
        possible write) and in a transaction block begun READ ONLY on a replica (a write fails
        there as in any READ ONLY transaction); else on a replica only when it is read-only
        (a pipelined write waits for the replica's backend to be released)."""
        if self.server is None:
            self.state.wrote = True
            return True
        if self.block:
            return True
        judged = self.judge(msgs)
        if judged.block:
            self.block = True
        return judged.read

    # --- the commit watermark -----------------------------------------------------------------

    def taken(self, lsn: int) -> Coroutine[None, None, None] | None:
        """A write ended on the primary at WAL position `lsn`: it is the key's watermark from now on (a
        later read by the same key waits for a replica that has it). With shared watermarks, the
        coroutine that stores it (the client's answer waits for it); else None (stored already)."""
        watermarks = self.routing.watermarks
        if not watermarks.shared:
            watermarks.advance_local(self.key(), lsn)
            return None
        return self._share(lsn)

    async def _share(self, lsn: int) -> None:
        try:
            await self.routing.watermarks.advance(self.key(), lsn)
        except WatermarkUnavailable as exc:
            self.routing.warn(
                "cannot share commit watermarks (%s): other instances may read from replicas behind them", exc
            )
