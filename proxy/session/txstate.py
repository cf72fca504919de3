"""Session state across transaction control, applied as it is sent; the answers only settle failures."""

from __future__ import annotations

import logging

from proxy.session import params, savepoints

log = logging.getLogger("pgwarden.session")

_I, _E = ord("I"), ord("E")
CONTROL = frozenset({"savepoint", "release", "rollback_to", "rollback", "begin", "commit"})


class TxState:
    """Mixin for Session: what BEGIN, COMMIT, ROLLBACK and savepoints do to tracked state.

    Everything is applied when the client sends it, in the order sent, so a statement sent
    after a ROLLBACK (in the same pipeline) is decided under the state that ROLLBACK restored
    and is never undone by it. The answers only tell what failed: a failed round trip that
    pgwarden cannot place makes the tenant unknown (`savepoints.settle`).
    """

    _frames: savepoints.Frames = ()  # the open transaction's savepoints
    _snapshot: savepoints.State | None = None  # before the current transaction's first change
    _block = False  # a transaction block is open, as far as what was sent goes
    _cycle: savepoints.Cycle | None = None  # what the next Query or Sync's answer must settle
    _changes = 0  # changes of state sent so far (SET, RESET, savepoints, rollbacks)
    _drained = 0  # ... as of the last time every request had been answered
    _losses = 0  # times the tenant was lost
    _status = _I  # transaction status of the last ReadyForQuery

    def _state(self) -> savepoints.State:
        """What a rollback would restore, as of now."""
        return savepoints.State(
            dict(self.settings),
            dict(self.backend.settings),  # type: ignore[attr-defined]
            self.local_tenant,
            self.tenant_unknown,
        )  # type: ignore[attr-defined]

    def _restore(self, state: savepoints.State) -> None:
        self.settings, self.backend.settings = dict(state.settings), dict(state.backend)  # type: ignore[attr-defined]
        self.local_tenant, self.tenant_unknown = state.local_tenant, state.unknown  # type: ignore[attr-defined]

    def _next_cycle(self) -> savepoints.Cycle:
        if self._cycle is None:
            self._cycle = savepoints.Cycle()
        return self._cycle

    def _changing(self, effect: params.Effect) -> None:
        """An effect is about to be applied: keep the state it changes, for a rollback."""
        if effect.kind in ("begin", "commit", "rollback"):
            return
        self._changes += 1
        if self._snapshot is None:
            self._snapshot = self._state()

    def _watch_tenant(self) -> None:
        """The next Query or Sync carries a tenant change: if it fails, the tenant is unknown."""
        if self.ident is not None:  # type: ignore[attr-defined]
            self._next_cycle().watched = True

    def _control(self, effect: params.Effect) -> None:
        """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, applied when sent."""
        kind = effect.kind
        if kind == "begin":
            if not self._block:  # BEGIN inside a block: PostgreSQL warns and ignores it
                self._block = True
                cycle = self._next_cycle()
                if cycle.begin is None:
                    cycle.begin = self._changes
        elif kind in ("commit", "rollback"):
            self._end(effect)
        else:
            self._watch_tenant()
            self._savepoint(effect)

    def _end(self, effect: params.Effect) -> None:
        """COMMIT keeps the transaction's changes, ROLLBACK restores the state before them (also
        of an implicit transaction, as PostgreSQL does); AND CHAIN opens the next one.

        A COMMIT of a transaction that already failed is a rollback in PostgreSQL: the cycle
        keeps what it would restore, settled by the answer (`savepoints.settle`).
        """
        cycle = self._next_cycle()
        snapshot, first = self._snapshot, not cycle.ended
        cycle.ended = True
        if snapshot is not None:
            if effect.kind == "rollback":
                self._changes += 1
                self._restore(snapshot)
                self._watch_tenant()
            elif first:
                cycle.commit = savepoints.Ending(snapshot, self._changes, self._losses)
        self._snapshot, self._frames, self.local_tenant = None, (), None  # type: ignore[attr-defined]
        self._block = effect.name == "chain"

    def _savepoint(self, effect: params.Effect) -> None:
        """SAVEPOINT, RELEASE, ROLLBACK TO: the savepoint stack and the state it restores."""
        if effect.kind == "savepoint":
            self._frames = savepoints.savepoint(self._frames, effect.name, self._state())
        elif effect.kind == "release":
            self._frames = savepoints.release(self._frames, effect.name) or self._frames
        else:
            self._frames, state = savepoints.rollback_to(self._frames, effect.name)
            if state is None:  # PostgreSQL will refuse it, or knows a savepoint pgwarden lost
                self._lose_tenant()
            else:
                self._restore(state)

    def _lose_tenant(self) -> None:
        """pgwarden cannot tell what PostgreSQL kept: the tenant is unknown until SET again,
        and so is every state a rollback in this transaction would restore."""
        if self.ident is None:  # type: ignore[attr-defined]
            return
        if not self.tenant_unknown:  # type: ignore[attr-defined]
            log.warning(
                "client %s: tenant unknown after a failed tenant change or savepoint "
                "command; tenant-scoped statements are refused until it is SET again",
                self.peer,
            )  # type: ignore[attr-defined]
        self.local_tenant, self.tenant_unknown = None, True  # type: ignore[attr-defined]
        self._losses += 1
        self._frames = savepoints.poison(self._frames)
        if self._snapshot is not None:
            self._snapshot = self._snapshot.poisoned()

    def _watch(self) -> object:
        """A Query or Sync is sent: its tag. Outside a transaction block it ends an implicit
        transaction, whose changes its answer settles (kept, or undone if it failed)."""
        cycle, self._cycle = self._cycle, None
        if not self._block:
            if self._snapshot is not None:
                cycle = cycle or savepoints.Cycle()
                cycle.implicit = savepoints.Ending(self._snapshot, self._changes, self._losses)
            self._snapshot, self._frames, self.local_tenant = None, (), None  # type: ignore[attr-defined]
        return cycle

    def _cycle_ended(self, tag: object, failed: bool, status: int) -> None:
        """A ReadyForQuery: settle its Query or Sync; when nothing else is in flight, check the
        transaction block pgwarden assumed against PostgreSQL's status."""
        if isinstance(tag, savepoints.Cycle):
            if tag.statements and not failed:
                self.versions.accepted(tag.statements)  # type: ignore[attr-defined]
            state, lost = savepoints.settle(tag, failed, self._status == _E, self._changes, self._losses)
            if state is not None:
                self._restore(state)
            if lost:
                self._lose_tenant()
        backend = self.backend  # type: ignore[attr-defined]
        if backend is not None and not backend.tracker.queue:
            self._reconcile(status != _I)
        self._status = status

    def _reconcile(self, block: bool) -> None:
        """Every request is answered: PostgreSQL is in a transaction block or not. A mismatch
        (a BEGIN an error skipped, a COMMIT pgwarden never saw) leaves pgwarden unable to tell
        what a rollback would restore, so a change sent meanwhile makes the tenant unknown."""
        if block != self._block:
            if self._snapshot is not None or self._changes != self._drained:
                self._lose_tenant()
            self._block, self._snapshot, self._frames = block, None, ()
            if not block:
                self.local_tenant = None  # type: ignore[attr-defined]
        self._drained = self._changes
