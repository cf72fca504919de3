"""The change consumer: a temporary pgoutput slot streamed to an on_commit callback, with a heartbeat for lag."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.changes import pgoutput
from proxy.changes.link import PgLink, quote_ident, quote_literal
from proxy.changes.publication import ensure_ddl_trigger, ensure_publication
from proxy.changes.visibility import SNAPSHOT_SQL, Snapshot
from proxy.wire import protocol
from proxy.wire.protocol import ProtocolError

log = logging.getLogger("pgwarden.changes")

OnCommit = Callable[[frozenset[str], int, float], Awaitable[None]]
OnResync = Callable[[], Awaitable[None]]
DDL_PREFIX = "pgwarden.ddl"  # the message the event trigger of `ddl_trigger` writes for each DDL command
_VISIBLE_WITHIN_S = 5.0  # a decoded commit not visible to new snapshots by then: the session starts again


def default_slot_name() -> str:
    """A slot name unique to this process (temporary slots are per connection, names per cluster)."""
    return f"pgwarden_changes_{os.getpid()}_{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class ChangeSource:
    """Where and what the consumer reads; `tables` as schema.table (or table, meaning public.table)."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None
    tables: tuple[str, ...] = ()  # empty: FOR ALL TABLES (needs a superuser to create the publication)
    publication: str = "pgwarden_changes"
    slot: str = field(default_factory=default_slot_name)
    heartbeat_s: float = 0.25  # how often a heartbeat is written through the WAL; the lag's resolution
    connect_timeout_s: float = 5.0
    backoff_s: tuple[float, float] = (0.1, 5.0)  # first and longest wait between reconnects
    ddl_trigger: bool = False  # create the event trigger reporting DDL (publication.ensure_ddl_trigger)


class ConsumerStatus(NamedTuple):
    """What the cache and /metrics read."""

    connected: bool
    lag_s: float  # inf until the first heartbeat comes back, and while disconnected
    behind: bool  # not healthy for the bound asked
    flushed_lsn: int
    sessions: int  # replication sessions started (each after the first one is a reconnect)
    last_error: str | None


class ChangeConsumer:
    """Reads committed changes from PostgreSQL's WAL; call `run()` in a task, `stop()` to end it.

    `on_commit(tables, commit_lsn, commit_time)` runs for every committed transaction that changed a
    published table, in commit order, once a new snapshot sees the commit (PostgreSQL logs a commit
    before it takes the transaction out of the running set) and before its position is acknowledged;
    if it raises, the session is dropped and started again. `on_resync()` runs each time a new slot is created, before any commit
    of that session is reported: writes made while no slot existed are lost to the stream, so the cache
    must treat every table as changed then.

    Lag: the consumer writes a transactional logical message (`pg_logical_emit_message`) every
    `heartbeat_s` on a second, plain connection; when it comes back through the stream, every
    transaction whose COMMIT returned before it was sent has been reported. `lag_s` is the local
    (monotonic) time since the newest heartbeat that came back was sent: no server clock involved.
    """

    def __init__(
        self,
        source: ChangeSource,
        on_commit: OnCommit,
        on_resync: OnResync | None = None,
        on_ddl: OnResync | None = None,
    ) -> None:
        self.source = source
        self._on_commit = on_commit
        self._on_resync = on_resync
        self._on_ddl = on_ddl  # a DDL command committed (a message of the event trigger, publication.ddl_trigger)
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self.connected = False
        self.last_seen: float | None = None  # time.monotonic() when the newest returned heartbeat was sent
        self.flushed_lsn = 0
        self.sessions = 0
        self.last_error: str | None = None
        self._sent: dict[int, float] = {}
        self._seq = 0
        self._prefix = f"pgwarden.heartbeat.{source.slot}"
        self._relations: dict[int, str] = {}
        self._stopping = False
        self._ddl = False  # the open transaction ran DDL
        self._xid = 0  # the open transaction's (from its Begin)
        self._snapshots: PgLink | None = None  # a third connection: is a decoded commit visible yet?
        self._snapshot: Snapshot | None = None  # the newest one read
        self.sees_ddl = False  # the event trigger exists: DDL that bypasses pgwarden is reported
        self._task: asyncio.Task[None] | None = None

    @property
    def lag_s(self) -> float:
        if not self.connected or self.last_seen is None:
            return float("inf")
        return time.monotonic() - self.last_seen

    def healthy(self, bound_s: float) -> bool:
        """Connected, and every commit older than `bound_s` has been reported."""
        return self.lag_s <= bound_s

    def status(self, bound_s: float) -> ConsumerStatus:
        lag = self.lag_s
        return ConsumerStatus(self.connected, lag, lag > bound_s, self.flushed_lsn, self.sessions, self.last_error)

    async def run(self) -> None:
        """Stream until `stop()`; reconnect with exponential backoff after any failure."""
        self._task = asyncio.current_task()
        first, longest = self.source.backoff_s
        delay = first
        while not self._stopping:
            streamed = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                streamed = self.last_seen is not None  # a heartbeat came back: the session worked
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("change consumer: session on slot %s ended: %s", self.source.slot, self.last_error)
            finally:
                self._disconnected()
            if self._stopping:
                break
            delay = first if streamed else min(delay * 2, longest)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """End `run()` (its task is cancelled) and close the connections; the temporary slot goes with them."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def reached(self, lsn: int, timeout_s: float) -> bool:
        """Wait until every commit before `lsn` has been reported (True), or `timeout_s` passed or the
        session ended first (False)."""
        if self.flushed_lsn >= lsn:
            return True
        if not self.connected:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((lsn, future))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not future]

    def _advance(self, lsn: int) -> None:
        if lsn <= self.flushed_lsn:
            return
        self.flushed_lsn = lsn
        for at, future in self._waiters:
            if at <= lsn and not future.done():
                future.set_result(True)

    def _disconnected(self) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_result(False)
        self.connected = False
        self.last_seen = None
        self._sent.clear()
        self._relations.clear()

    async def _session(self) -> None:
        """One replication session: publication, a new temporary slot, then the stream until it fails."""
        src = self.source
        params = {"user": src.user, "database": src.database, "application_name": src.slot}
        control = await PgLink.open(src.host, src.port, params, src.password, src.connect_timeout_s)
        try:
            stream = await PgLink.open(
                src.host, src.port, params | {"replication": "database"}, src.password, src.connect_timeout_s
            )
        except BaseException:
            control.close()
            raise
        try:
            self._snapshots = await PgLink.open(src.host, src.port, params, src.password, src.connect_timeout_s)
            await ensure_publication(control, src.publication, src.tables)
            if src.ddl_trigger:
                self.sees_ddl = await ensure_ddl_trigger(control)
            await control.query("SET synchronous_commit = local")  # a heartbeat need not wait for a standby
            await stream.query(
                f"CREATE_REPLICATION_SLOT {quote_ident(src.slot)} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
            )
            self.sessions += 1
            if self._on_resync is not None:
                await self._on_resync()
            options = (
                f"proto_version '1', publication_names {quote_literal(quote_ident(src.publication))}, messages 'true'"
            )
            await stream.start_copy(f"START_REPLICATION SLOT {quote_ident(src.slot)} LOGICAL 0/0 ({options})")
            self.connected = True
            log.info("change consumer: streaming slot %s (publication %s)", src.slot, src.publication)
            await _first_failure(self._heartbeat(control), self._stream(stream))
        finally:
            control.close()
            stream.close()
            if self._snapshots is not None:
                self._snapshots.close()
                self._snapshots = None

    async def _heartbeat(self, control: PgLink) -> None:
        prefix = quote_literal(self._prefix)
        while True:
            self._seq += 1
            self._sent[self._seq] = time.monotonic()
            if len(self._sent) > 1000:  # none has come back for minutes: forget the oldest
                del self._sent[min(self._sent)]
            await control.query(f"SELECT pg_logical_emit_message(true, {prefix}, '{self._seq}')")
            await asyncio.sleep(self.source.heartbeat_s)

    async def _stream(self, stream: PgLink) -> None:
        changed: set[int] = set()
        in_tx = False
        acked = -1
        while True:
            kind, msg = await stream.read()
            if kind != protocol.MSG_COPY_DATA:
                stream.check_error(kind, msg)
                raise ConnectionError(f"the walsender sent {chr(kind)!r} during replication")
            frame = pgoutput.decode_copy_data(msg[5:])
            if isinstance(frame, pgoutput.Keepalive):
                if not in_tx:  # everything before end_lsn has been sent, and so reported
                    self._advance(frame.end_lsn)
                if frame.reply_requested:
                    acked = -1
            else:
                in_tx = await self._change(frame.payload, changed, in_tx)
            if acked != self.flushed_lsn and not stream.buffered():
                acked = self.flushed_lsn
                stream.write(protocol.message(b"d", pgoutput.standby_status_update(acked, acked, acked, time.time())))

    async def _change(self, payload: bytes, changed: set[int], in_tx: bool) -> bool:
        """Take one pgoutput message; return whether a transaction is open after it."""
        rel = pgoutput.changed_relation(payload)
        if rel is not None:
            changed.add(rel)
            return in_tx
        message = pgoutput.decode_message(payload)
        if isinstance(message, pgoutput.Begin):
            changed.clear()
            self._xid = message.xid
            return True
        if isinstance(message, pgoutput.Commit):
            await self._commit(changed, message)
            changed.clear()
            return False
        self._other(message, changed)
        return in_tx

    def _other(self, message: pgoutput.PgoutputMessage, changed: set[int]) -> None:
        if isinstance(message, pgoutput.Relation):
            self._relations[message.relation_id] = message.qualified
        elif isinstance(message, pgoutput.Truncate):
            changed.update(message.relation_ids)
        elif isinstance(message, pgoutput.Message) and message.prefix == self._prefix:
            self._heartbeat_back(message.content)
        elif isinstance(message, pgoutput.Message) and message.prefix == DDL_PREFIX:
            self._ddl = True

    def _heartbeat_back(self, content: bytes) -> None:
        try:
            seq = int(content)
        except ValueError:
            return
        sent = self._sent.get(seq)
        if sent is None:
            return
        self.last_seen = sent
        for old in [s for s in self._sent if s <= seq]:
            del self._sent[old]

    async def _commit(self, changed: set[int], commit: pgoutput.Commit) -> None:
        if changed:
            missing = changed - self._relations.keys()
            if missing:
                raise ProtocolError(f"changes to relations {sorted(missing)} came before their Relation message")
            tables = frozenset(self._relations[r] for r in changed)
            await self._visible(self._xid)
            await self._on_commit(tables, commit.commit_lsn, commit.commit_time)
        if self._ddl and self._on_ddl is not None:
            await self._visible(self._xid)
            await self._on_ddl()
        self._ddl = False
        self._advance(commit.end_lsn)

    async def _visible(self, xid: int) -> None:
        """Return once a new snapshot sees transaction `xid`: an answer read before then, and stored
        under versions bumped for it, could hold what it overwrote. Usually one query, or none."""
        if self._snapshot is not None and self._snapshot.sees(xid):
            return
        assert self._snapshots is not None
        deadline = time.monotonic() + _VISIBLE_WITHIN_S
        while True:
            rows = await self._snapshots.query(SNAPSHOT_SQL)
            self._snapshot = Snapshot.parse(str(rows[0][0]))
            if self._snapshot.sees(xid):
                return
            if time.monotonic() > deadline:
                raise ProtocolError(f"transaction {xid} was decoded as committed but is still running")
            await asyncio.sleep(0.0002)


async def _first_failure(*work: Awaitable[None]) -> None:
    """Run forever-running coroutines together; when one ends or fails, cancel the rest and re-raise."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
    raise ConnectionError("a replication task ended")
