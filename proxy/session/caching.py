"""The result cache for the process and in a session: batches looked up before a backend is lent, answers captured and stored, writes held until the WAL consumer has them."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from proxy.cache.eligible import Catalog, Judge
from proxy.cache.results import Miss, ResultCache
from proxy.cache.versions import CacheUnavailable
from proxy.config.cache import Cache as CacheConfig
from proxy.ops.stats import Shapes, literal_key, statement_text
from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Registry
from proxy.routing.volatility import ReadClassifier, Volatility
from proxy.session import session_sql
from proxy.session.accounting import Accounting
from proxy.session.guard import Guard
from proxy.session.probe import READY_IDLE, READY_IN_BLOCK, Probe, batch_key, bound_probe, query_probe
from proxy.session.routes import BatchRoute, judge_batch
from proxy.session.state import SessionState
from proxy.session.statements import Statements
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_PARSE, MSG_QUERY, TX_BLOCK, TX_IDLE
from proxy.wire.tracker import Ready, answer_rows

log = logging.getLogger("pgwarden.cache")

_ANSWER_KINDS = frozenset(b"12TnDCs")  # what a cached answer may hold before its ReadyForQuery
_REREAD_S = 30.0
_FACTS_CAP, _FACTS_MAX_BYTES = 10_000, 4096  # messages kept whole per database: under 45 MB at the very most
_BOUND_KINDS = frozenset(b"DES")  # what may follow the Bind of a prepared statement in a batch _facts knows
_NO_NAMES = Statements(Registry())  # (a lone Query names no prepared statement)
# Statements that may change what a cached answer holds or who may read it, without a row in the WAL.
_SCHEMA_OR_PRIVILEGES = re.compile(rb"(?i)\b(?:create|alter|drop|comment|grant|revoke|security|import|reassign)\b")
# SessionCache.block: no READ ONLY block; one just begun (its isolation to be asked); one at READ COMMITTED
# whose every statement so far was one read (the cache answers in it: each statement takes a new snapshot).
NO_BLOCK, BLOCK_BEGUN, BLOCK_READS = range(3)


class Feed(Protocol):
    """One database's WAL consumer, as the cache sees it (proxy.changes.consumer.ChangeConsumer)."""

    connected: bool

    def healthy(self, bound_s: float) -> bool: ...
    async def reached(self, lsn: int, timeout_s: float) -> bool: ...


class Facts(NamedTuple):
    """One Query message: the tables keying its answer (None: not cached), its text, and its judgement."""

    tables: tuple[str, ...] | None
    text: str
    route: BatchRoute
    types: bytes = b""  # a cacheable Parse's parameter types


class Caching:
    """The process's result cache: the answers (`results`), and per database the eligibility judge,
    the classifier that tells writes, and the WAL feed (started on first use)."""

    def __init__(
        self,
        config: CacheConfig,
        results: ResultCache,
        feed: Callable[[str], Feed],
        read_catalog: Callable[[str], Awaitable[tuple[Volatility, Catalog]]],
        shapes: Shapes | None = None,
    ) -> None:
        self.config, self.results = config, results
        self.shapes = shapes if shapes is not None else Shapes()  # (the statistics' own: shaped once for both)
        self.feed, self._read_catalog = feed, read_catalog
        self.judges: dict[str, Judge] = {}
        self._facts: dict[str, dict[bytes | str, Facts]] = {}  # per database: a shape, or a message -> what it runs
        self._classifiers: dict[str, ReadClassifier] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self.bound_s = config.max_lag_ms / 1000

    def judge(self, database: str) -> Judge | None:
        judge = self.judges.get(database)
        if judge is None:
            self.refresh(database)
        return judge

    def facts(self, database: str, msg: bytes, whole: bool = False) -> Facts | None:
        """What one Query or Parse message runs, for the cache and for telling writes (None until the
        catalog is read): its shape (integer constants zeroed; `Shapes`, shared with the statistics)
        judged once by both. A cacheable message is also kept whole, with its text, and so is any
        when `whole` (a Parse: drivers send the same one again)."""
        memo = self._facts.get(database)
        if memo is None:
            return None
        facts = memo.get(msg)  # (a cacheable message seen before)
        if facts is None:
            sql, shape = None, self.shapes.known(msg)  # (a text like one seen, but for its digits: not decoded)
            if shape is None:
                sql, shape = self.shapes.of(msg)
            facts = memo.get(shape)  # (the same statement with other integers: judged already)
            if facts is None:
                verdict = self.judges[database](shape)
                route = judge_batch([(MSG_QUERY, protocol.query(shape))], _NO_NAMES, self.classifier(database))
                facts = self._keep(memo, shape, Facts(verdict.tables, "", route))
            if facts.tables is not None:
                types = protocol.decode_parse(msg).param_types if msg[0] == MSG_PARSE else b""
                facts = facts._replace(text=statement_text(msg) if sql is None else sql, types=types)
            if (whole or facts.tables is not None) and len(msg) <= _FACTS_MAX_BYTES:
                self._keep(memo, msg, facts)
        return facts

    @staticmethod
    def _keep(memo: dict[bytes | str, Facts], key: bytes | str, facts: Facts) -> Facts:
        if len(memo) >= _FACTS_CAP:
            memo.clear()
        memo[key] = facts
        return facts

    def classifier(self, database: str) -> ReadClassifier:
        """Tells reads from writes (everything is a write until the catalog is read)."""
        classifier = self._classifiers.get(database)
        if classifier is None:
            classifier = self._classifiers[database] = ReadClassifier(None, shape_key=literal_key)
            self.refresh(database)
        return classifier

    def serving(self, database: str) -> bool:
        """Are answers served for `database`? Only while its WAL consumer is within the bound."""
        return self.feed(database).healthy(self.bound_s)

    async def ready(self, database: str) -> bool:
        """Wait for the database's first catalog read (a login waits); start its WAL feed when it has
        tables to cache. False when it has none (its sessions then skip the cache altogether)."""
        self.classifier(database)
        task = self._loading.get(database)
        if task is not None:
            await asyncio.shield(task)
        if not self.caches(database):
            return False
        self.feed(database)
        return True

    def caches(self, database: str) -> bool:
        judge = self.judges.get(database)
        return judge is not None and bool(judge.catalog.usable)

    def refresh(self, database: str) -> None:
        if database not in self._loading:
            self._loading[database] = asyncio.get_running_loop().create_task(self._load(database))

    async def _load(self, database: str) -> None:
        try:
            volatility, catalog = await self._read_catalog(database)
        except Exception as exc:  # the judge keeps what it had; nothing new becomes eligible
            log.warning("cannot read the catalog of database %r for the cache: %s", database, exc)
        else:
            before = self.judges.get(database)
            for name, problem in sorted(catalog.problems.items()):  # (told again only when it changes)
                if before is None or before.catalog.problems.get(name) != problem:
                    log.warning("cache: %s is never cached: %s", name, problem)
            self.judges[database] = Judge(catalog, self.config.stable_functions, shape_key=literal_key)
            self._classifiers[database] = ReadClassifier(volatility, shape_key=literal_key)
            self._facts[database] = {}
        finally:
            del self._loading[database]

    async def reread(self) -> None:
        """Read each database's catalog again every _REREAD_S (DDL that bypassed pgwarden)."""
        while True:
            await asyncio.sleep(_REREAD_S)
            for database in list(self.judges):
                self.refresh(database)

    async def committed(self, database: str, lsn: int) -> None:
        """A write committed at `lsn`: return once the WAL consumer has bumped what it changed; when it
        cannot within commit_wait_ms, every answer of the database is dropped instead."""
        if not self.caches(database):
            return
        feed = self.feed(database)
        if feed.connected and await feed.reached(lsn, self.config.commit_wait_ms / 1000):
            return
        await self.invalidate(database, "commit_wait")

    async def invalidate(self, database: str, source: str) -> None:
        try:
            await self.results.invalidate(database, source)
        except CacheUnavailable as exc:  # (lookups fail too while Redis does: nothing is served)
            self.results.redis_failed(exc)


class SessionCache:
    """One session's use of the cache: `probe` a batch before it needs a backend, `note` what a
    batch sent to a backend may write, `capture` the answer of a probed batch to store it."""

    def __init__(self, caching: Caching, state: SessionState, names: Statements, guard: Guard | None) -> None:
        self.caching, self.state, self.names, self.guard = caching, state, names, guard
        self.off: str | None = None  # why this session no longer uses the cache
        self.ddl = False  # the open transaction sent DDL (or GRANT/REVOKE): every answer goes at its commit
        self.block = NO_BLOCK
        self._last: tuple[list[tuple[int, bytes]], int, Facts | None] | None = None  # the batch judged last

    @property
    def shared(self) -> bool:
        return self.caching.results.shared is not None

    def probe(self, msgs: list[tuple[int, bytes]], backend: Backend | None) -> Probe | None:
        """The lookup for a batch whose answer may come from the cache, else None."""
        facts = self._facts(msgs) if self.guard is None else None
        if facts is not None and facts.tables is None:  # the common case, a few dictionary lookups: not cached
            return None
        state = self.state
        if self.off is not None or state.pinned or (msgs[0][0] == MSG_PARSE and not state.tx_mode):
            return None  # (session pooling: a hit would leave the backend's unnamed statement an older one)
        ready = READY_IDLE
        if backend is not None and (not backend.tracker.idle or backend.tracker.status != TX_IDLE):
            if not backend.tracker.idle or backend.tracker.status != TX_BLOCK or self.block != BLOCK_READS:
                return None  # (answers still due, or a transaction block the cache may not answer in)
            ready = READY_IN_BLOCK
        if facts is not None:
            assert facts.tables is not None
            if msgs[0][0] == MSG_QUERY:
                probe: Probe | None = query_probe(state, facts.tables, facts.text)
            else:
                probe = bound_probe(msgs, state, facts.tables, facts.text, facts.types)
        else:
            judge = self.caching.judge(state.database)
            if judge is None:
                return None
            probe = batch_key(msgs, state, self.names, self.guard, judge)
        if probe is not None and not self.caching.serving(state.database):
            self.caching.results.not_served("wal")
            return None
        return probe if probe is None or ready is READY_IDLE else probe._replace(ready=ready)

    def _facts(self, msgs: list[tuple[int, bytes]]) -> Facts | None:
        """What a batch of one Query, of Parse (unnamed)/Bind/[Describe]/Execute/Sync, or of
        Bind/[Describe]/Execute/Sync of one prepared statement runs (None: another batch, or the
        catalog not read yet). The batch `probe` judged is not judged again by `note` (the same
        list, still as long: a list of messages only grows)."""
        last = self._last
        if last is not None and last[0] is msgs and last[1] == len(msgs):
            return last[2]
        facts = self._batch_facts(msgs)
        self._last = (msgs, len(msgs), facts) if facts is not None else None  # (small batches only)
        return facts

    def _batch_facts(self, msgs: list[tuple[int, bytes]]) -> Facts | None:
        kind, first = msgs[0]
        database = self.state.database
        if kind == MSG_QUERY:
            return self.caching.facts(database, first) if len(msgs) == 1 else None
        if kind == MSG_PARSE and first[5] == 0 and 2 <= len(msgs) <= 5 and msgs[1][0] == MSG_BIND:
            bind = msgs[1][1]  # (unnamed portal and statement: it runs what the Parse parsed)
            if bind[5] != 0 or bind[6] != 0:
                return None
            for i in range(2, len(msgs)):
                if msgs[i][0] not in _BOUND_KINDS:
                    return None
            return self.caching.facts(database, first, True)
        if kind != MSG_BIND or first[5] != 0 or first[6] == 0 or len(msgs) > 4:  # (unnamed portal, named statement)
            return None
        for i in range(1, len(msgs)):
            if msgs[i][0] not in _BOUND_KINDS:
                return None
        stmt = self.names.lookup(protocol.read_cstr(first, 6)[0])
        return None if stmt is None else self.caching.facts(database, stmt.parse, True)

    def answered(self, msgs: list[tuple[int, bytes]], probe: Probe) -> None:
        """A batch was answered from the cache: the unnamed statement its Parse defines is the client's
        now (a later Bind of it alone prepares it on the backend first), as the guard passed it under a
        policy; a policed statement is counted in pgwarden_statements_total as the router decided it."""
        kind, first = msgs[0]
        guard = self.guard
        if kind == MSG_PARSE:
            if guard is not None:
                assert probe.prepared is not None and probe.decision is not None
                guard.answered_parse(probe.prepared)
                if probe.decision.sql is not None:  # (the rewritten Parse, as `Guard.check_parse` makes it)
                    first = protocol.parse("", probe.decision.sql, probe.prepared.param_types)
            self.names.parsed_unnamed(first, here=False)
        if guard is not None and probe.decision is not None:
            guard.counted(probe.decision, simple=kind == MSG_QUERY)

    def lookup_local(self, probe: Probe) -> bytes | Miss:
        return self.caching.results.lookup_local(self.state.database, probe.tables, probe.key)

    async def lookup(self, probe: Probe) -> bytes | Miss | None:
        return await self.caching.results.lookup(self.state.database, probe.tables, probe.key)

    def recorded(
        self, accounting: Accounting, answer: bytes, probe: Probe, msgs: list[tuple[int, bytes]], seconds: float
    ) -> bool:
        """The audit record of a batch answered from the cache (`Accounting.cached`): the client's text,
        the policy's decision and tenant, the answer's rows; a Bind of a named statement as `Accounting.bind`
        records it. False: the trail cannot take it (block)."""
        kind, first = msgs[0]
        decision = probe.decision
        if kind == MSG_QUERY:
            sql = protocol.decode_query(first)
        elif kind == MSG_PARSE:
            sql = probe.text if probe.prepared is None else probe.prepared.query  # (the client's)
        else:
            sql, decision = accounting.bound(first)
        tenant = self.guard.tenant() if self.guard is not None else None
        if not accounting.cached(sql, kind == MSG_QUERY, decision, tenant, seconds, answer_rows(answer)):
            return False
        if kind == MSG_PARSE:  # (a later Bind of the unnamed statement is recorded with its text)
            accounting.statement(sql, False, decision, tenant, "")
        return True

    def note(self, msgs: list[tuple[int, bytes]], judged_write: bool | None = None) -> None:
        """A batch on its way to a backend: may it write (its transaction's answer then waits for the
        WAL consumer), does it send DDL, does it change session state the key cannot see?"""
        state = self.state
        if judged_write is None:
            facts = self._facts(msgs)
            if facts is not None:
                judged = facts.route
            else:
                judged = judge_batch(msgs, self.names, self.caching.classifier(state.database))
            if judged.block or facts is None or not judged.read:  # (one read keeps a block as it was)
                self.block = BLOCK_BEGUN if judged.block else NO_BLOCK
            if judged.read or not judged.writes:
                if not judged.read and not (state.tx_mode or self.guard is not None):
                    self.off = "a session statement pgwarden does not track (session pooling)"
                return
        else:
            self.block = NO_BLOCK  # (read routing: a READ ONLY block goes to a replica)
            if not judged_write:
                return
        state.wrote = True
        for kind, msg in msgs:
            if kind in (protocol.MSG_QUERY, protocol.MSG_PARSE):
                if _SCHEMA_OR_PRIVILEGES.search(msg, 5) is not None:
                    self.ddl = True
                if self.off is None and session_sql.may_leave_state(msg.lower()):
                    self.off = "it may have created a temporary table or changed a setting by set_config()"

    def capture(self, miss: Miss, on_replica: bool, status: int) -> Capture | None:
        """What stores the answer of a probed batch sent with the backend in `status`."""
        if on_replica:  # (a replica may be behind the versions the lookup read)
            self.caching.results.skip("read on a replica")
            return None
        return Capture(self.caching.results, miss, status)

    def block_began(self, status: int, wrote: bool) -> bool:
        """The backend answered all it was sent, ending in `status`: must the isolation of a READ ONLY
        block just begun be asked? (Outside a block, there is no block any more; nor after a write
        whose commit the WAL consumer has not been waited for: the cache stays out of that block.)"""
        if status != TX_BLOCK or wrote:
            self.block = NO_BLOCK
        return self.block == BLOCK_BEGUN

    def isolation(self, level: str | None) -> None:
        """The answer of `SHOW transaction_isolation` in a READ ONLY block just begun."""
        self.block = BLOCK_READS if level == "read committed" else NO_BLOCK

    async def committed(self, lsn: int) -> None:
        database = self.state.database
        if self.ddl:
            self.ddl = False
            await self.caching.invalidate(database, "ddl")
            self.caching.refresh(database)
        await self.caching.committed(database, lsn)


class Capture:
    """The answer of one probed batch, taken as it goes to the client, stored when it ends well."""

    __slots__ = ("miss", "parts", "ready", "results", "size", "status")

    def __init__(self, results: ResultCache, miss: Miss, status: int = TX_IDLE) -> None:
        self.results, self.miss, self.status = results, miss, status  # (TX_BLOCK: in a READ ONLY block)
        self.ready = READY_IN_BLOCK if status == TX_BLOCK else READY_IDLE  # what the answer must end with
        self.parts: list[bytes] = []
        self.size = 0

    def take(self, out: bytes, ready: Ready | None, queued: int) -> bool:
        """Bytes for the client; True when the capture is over (its ReadyForQuery came)."""
        self.parts.append(out)
        self.size += len(out)
        if ready is None:
            if self.size > self.results.config.max_result_bytes:
                self.results.skip("too large")
                return True
            return False
        answer = b"".join(self.parts)
        end = len(answer) - len(self.ready)
        if ready.error is not None or ready.status != self.status or queued:
            self.results.skip("error, transaction or pipeline")
        elif not answer.endswith(self.ready) or not plain_answer(answer, end):
            self.results.skip("notice or other message")
        else:
            asyncio.get_running_loop().create_task(self.results.store(self.miss, answer[:end]))
        return True


def plain_answer(data: bytes, end: int) -> bool:
    """Does data[:end] hold only messages a cached answer may replay (no notice, no parameter status)?

    >>> done = protocol.command_complete("SELECT 0")
    >>> plain_answer(done, len(done)), plain_answer(protocol.message(b"N", b"x"), 6)
    (True, False)
    """
    pos = 0
    while pos < end:
        if data[pos] not in _ANSWER_KINDS or pos + 5 > end:
            return False
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    return pos == end
