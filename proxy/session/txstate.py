"""Session state across transaction control, applied as it is sent; the answers only settle failures."""

from __future__ import annotations

import logging

from proxy.session import params, savepoints
from proxy.session.state import SessionState
from proxy.wire.protocol import TX_FAILED, TX_IDLE

log = logging.getLogger("pgwarden.session")

CONTROL = frozenset({"savepoint", "release", "rollback_to", "rollback", "begin", "commit"})


class Transaction:
    """What BEGIN, COMMIT, ROLLBACK and savepoints do to the tracked state of a session.

    Everything is applied when the client sends it, in the order sent, so a statement sent
    after a ROLLBACK (in the same pipeline) is decided under the state that ROLLBACK restored
    and is never undone by it. The answers only tell what failed: a failed round trip that
    pgwarden cannot place makes the tenant unknown (`savepoints.settle`).

    Its input and output is the session's tracked state (`SessionState.settings`, tenant
    fields) and the settings of the backend serving it, both given to each call that reads
    or restores them.
    """

    __slots__ = ("_block", "_changes", "_cycle", "_drained", "_frames", "_losses", "_snapshot", "_state", "_status")

    def __init__(self, state: SessionState) -> None:
        self._state = state
        self._frames: savepoints.Frames = ()  # the open transaction's savepoints
        self._snapshot: savepoints.State | None = None  # before the current transaction's first change
        self._block = False  # a transaction block is open, as far as what was sent goes
        self._cycle: savepoints.Cycle | None = None  # what the next Query or Sync's answer must settle
        self._changes = 0  # changes of state sent so far (SET, RESET, savepoints, rollbacks)
        self._drained = 0  # ... as of the last time every request had been answered
        self._losses = 0  # times the tenant was lost
        self._status = TX_IDLE  # transaction status of the last ReadyForQuery

    @property
    def in_block(self) -> bool:
        """A transaction block is open, as far as what was sent goes."""
        return self._block

    @property
    def in_savepoint(self) -> bool:
        """A savepoint of the open transaction block is open, as far as what was sent goes."""
        return bool(self._frames)

    def _snapshot_of(self, backend: dict[str, str]) -> savepoints.State:
        """What a rollback would restore, as of now."""
        state = self._state
        return savepoints.State(dict(state.settings), dict(backend), state.local_tenant, state.tenant_unknown)

    def _restore(self, saved: savepoints.State, backend: dict[str, str]) -> None:
        state = self._state
        state.settings = dict(saved.settings)
        backend.clear()
        backend.update(saved.backend)
        state.local_tenant, state.tenant_unknown = saved.local_tenant, saved.unknown

    def next_cycle(self) -> savepoints.Cycle:
        """What the next Query or Sync's answer must settle (made on first use)."""
        if self._cycle is None:
            self._cycle = savepoints.Cycle()
        return self._cycle

    def sent_in_cycle(self, name: str) -> bool:
        """Was a Parse or Close of statement `name` sent since the last Query or Sync?"""
        cycle = self._cycle
        return cycle is not None and name in cycle.statements

    def changing(self, effect: params.Effect, backend: dict[str, str]) -> None:
        """An effect is about to be applied: keep the state it changes, for a rollback."""
        if effect.kind in ("begin", "commit", "rollback"):
            return
        self._changes += 1
        if self._snapshot is None:
            self._snapshot = self._snapshot_of(backend)

    def watch_tenant(self) -> None:
        """The next Query or Sync carries a tenant change: if it fails, the tenant is unknown."""
        if self._state.ident is not None:
            self.next_cycle().watched = True

    def control(self, effect: params.Effect, backend: dict[str, str]) -> None:
        """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, applied when sent."""
        kind = effect.kind
        if kind == "begin":
            if not self._block:  # BEGIN inside a block: PostgreSQL warns and ignores it
                self._block = True
                cycle = self.next_cycle()
                if cycle.begin is None:
                    cycle.begin = self._changes
        elif kind in ("commit", "rollback"):
            self._end(effect, backend)
        else:
            self.watch_tenant()
            self._savepoint(effect, backend)

    def _end(self, effect: params.Effect, backend: dict[str, str]) -> None:
        """COMMIT keeps the transaction's changes, ROLLBACK restores the state before them (also
        of an implicit transaction, as PostgreSQL does); AND CHAIN opens the next one.

        A COMMIT of a transaction that already failed is a rollback in PostgreSQL: the cycle
        keeps what it would restore, settled by the answer (`savepoints.settle`).
        """
        cycle = self.next_cycle()
        snapshot, first = self._snapshot, not cycle.ended
        if first:
            cycle.committing = effect.kind == "commit"
        cycle.ended = True
        if snapshot is not None:
            if effect.kind == "rollback":
                self._changes += 1
                self._restore(snapshot, backend)
                self.watch_tenant()
            elif first:
                cycle.commit = savepoints.Ending(snapshot, self._changes, self._losses)
        self._snapshot, self._frames, self._state.local_tenant = None, (), None
        self._block = effect.name == "chain"

    def _savepoint(self, effect: params.Effect, backend: dict[str, str]) -> None:
        """SAVEPOINT, RELEASE, ROLLBACK TO: the savepoint stack and the state it restores."""
        if effect.kind == "savepoint":
            self._frames = savepoints.savepoint(self._frames, effect.name, self._snapshot_of(backend))
        elif effect.kind == "release":
            self._frames = savepoints.release(self._frames, effect.name) or self._frames
        else:
            self.next_cycle().recovered = True  # (a failed transaction is no longer, if it succeeds)
            self._frames, saved = savepoints.rollback_to(self._frames, effect.name)
            if saved is None:  # PostgreSQL will refuse it, or knows a savepoint pgwarden lost
                self._lose_tenant()
            else:
                self._restore(saved, backend)

    def _lose_tenant(self) -> None:
        """pgwarden cannot tell what PostgreSQL kept: the tenant is unknown until SET again,
        and so is every state a rollback in this transaction would restore."""
        state = self._state
        if state.ident is None:
            return
        if not state.tenant_unknown:
            log.warning(
                "client %s: tenant unknown after a failed tenant change or savepoint "
                "command; tenant-scoped statements are refused until it is SET again",
                state.peer,
            )
        state.local_tenant, state.tenant_unknown = None, True
        self._losses += 1
        self._frames = savepoints.poison(self._frames)
        if self._snapshot is not None:
            self._snapshot = self._snapshot.poisoned()

    def watch(self) -> savepoints.Cycle | None:
        """A Query or Sync is sent: its tag. Outside a transaction block it ends an implicit
        transaction, whose changes its answer settles (kept, or undone if it failed)."""
        cycle, self._cycle = self._cycle, None
        if not self._block:
            if self._snapshot is not None:
                cycle = cycle or savepoints.Cycle()
                cycle.implicit = savepoints.Ending(self._snapshot, self._changes, self._losses)
            self._snapshot, self._frames, self._state.local_tenant = None, (), None
        return cycle

    def ended(self, tag: object, failed: bool, status: int, backend: dict[str, str], drained: bool) -> bool | None:
        """A ReadyForQuery: settle its Query or Sync; when nothing else is in flight (`drained`),
        check the transaction block pgwarden assumed against PostgreSQL's status. Returns whether
        the transaction block it ended committed (None: it ended none): its first COMMIT or
        ROLLBACK was a COMMIT, nothing in it failed, and the block had not failed before it."""
        committed = None
        if isinstance(tag, savepoints.Cycle):
            if tag.ended:
                committed = tag.committing and not failed and self._status != TX_FAILED
            saved, lost = savepoints.settle(tag, failed, self._status == TX_FAILED, self._changes, self._losses)
            if saved is not None:
                self._restore(saved, backend)
            if lost:
                self._lose_tenant()
        if drained:
            self._reconcile(status != TX_IDLE)
        self._status = status
        return committed

    def _reconcile(self, block: bool) -> None:
        """Every request is answered: PostgreSQL is in a transaction block or not. A mismatch
        (a BEGIN an error skipped, a COMMIT pgwarden never saw) leaves pgwarden unable to tell
        what a rollback would restore, so a change sent meanwhile makes the tenant unknown."""
        if block != self._block:
            if self._snapshot is not None or self._changes != self._drained:
                self._lose_tenant()
            self._block, self._snapshot, self._frames = block, None, ()
            if not block:
                self._state.local_tenant = None
        self._drained = self._changes
