"""Session state inside a transaction: what ROLLBACK TO SAVEPOINT and RELEASE keep or restore (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class State:
    """What a rollback restores: the client's and its backend's settings, SET LOCAL's tenant,
    and whether the tenant is unknown (pgwarden could not tell what PostgreSQL kept)."""

    settings: dict[str, str]
    backend: dict[str, str]
    local_tenant: str | None = None
    unknown: bool = False

    def poisoned(self) -> State:
        """The same state with its tenant unknown (and no SET LOCAL tenant)."""
        return replace(self, local_tenant=None, unknown=True)


Frames = tuple[tuple[str, State], ...]  # savepoints of the open transaction, oldest first


def savepoint(frames: Frames, name: str, state: State) -> Frames:
    """SAVEPOINT name: a new frame, even if the name is taken (PostgreSQL allows it).

    >>> s = State({}, {})
    >>> [n for n, _ in savepoint(savepoint((), "a", s), "a", s)]
    ['a', 'a']
    """
    return frames + ((name, state),)


def _latest(frames: Frames, name: str) -> int | None:
    for i in range(len(frames) - 1, -1, -1):
        if frames[i][0] == name:
            return i
    return None


def rollback_to(frames: Frames, name: str) -> tuple[Frames, State | None]:
    """ROLLBACK TO SAVEPOINT name: the frames left and the state to restore (None: no such
    savepoint, PostgreSQL refuses it). The most recent frame of that name is used and kept;
    newer ones are destroyed.

    >>> a, b = State({"t": "acme"}, {}), State({"t": "globex"}, {})
    >>> left, state = rollback_to((("a", a), ("b", b), ("a", b)), "a")
    >>> [n for n, _ in left], state.settings
    (['a', 'b', 'a'], {'t': 'globex'})
    >>> left, state = rollback_to((("a", a), ("b", b)), "a")
    >>> [n for n, _ in left], state.settings
    (['a'], {'t': 'acme'})
    >>> rollback_to((("a", a),), "z")[1] is None
    True
    """
    at = _latest(frames, name)
    if at is None:
        return frames, None
    return frames[: at + 1], frames[at][1]


def release(frames: Frames, name: str) -> Frames | None:
    """RELEASE SAVEPOINT name: the frames left (that one and newer ones go, their effects stay);
    None when there is no such savepoint.

    >>> s = State({}, {})
    >>> [n for n, _ in release((("a", s), ("b", s), ("c", s)), "b")]
    ['a']
    >>> release((("a", s),), "z") is None
    True
    """
    at = _latest(frames, name)
    return None if at is None else frames[:at]


def poison(frames: Frames) -> Frames:
    """Every frame with its tenant unknown: after a failure pgwarden cannot place.

    >>> poison((("a", State({}, {}, "acme")),))[0][1]
    State(settings={}, backend={}, local_tenant=None, unknown=True)
    """
    return tuple((name, state.poisoned()) for name, state in frames)


@dataclass(frozen=True, slots=True)
class Ending:
    """A transaction pgwarden ended when its COMMIT (or its Sync) was sent, which only the answer
    proves: the state a rollback restores, and the counts of changes and losses at that moment."""

    state: State
    changes: int
    losses: int


@dataclass(slots=True)
class Cycle:
    """What the answer to one Query or Sync must settle (its tag in the Tracker).

    watched: it carries a tenant change, or a rollback that undid one: if it fails, what
    PostgreSQL kept is unknown. ended: a COMMIT or ROLLBACK was sent in it; committing: the first
    of them was a COMMIT; commit: that COMMIT ends a transaction that changed state (a rollback
    if that transaction had already failed). implicit: it ends an implicit transaction that
    changed state (rolled back if the cycle fails). begin: the count of changes when a BEGIN was sent in it (an error
    before the BEGIN skips it: the changes sent after ran outside any transaction block).
    statements: for each statement name a policed client's Parse or Close named in it, the
    serial of the last (`held.Versions`): if the cycle succeeds, that is what the name holds.
    recovered: a ROLLBACK TO was sent in it: if the cycle succeeds, a transaction that had failed
    before it is no longer failed, and its COMMIT commits.
    """

    watched: bool = False
    recovered: bool = False
    ended: bool = False
    committing: bool = False
    commit: Ending | None = None
    implicit: Ending | None = None
    begin: int | None = None
    statements: dict[str, int] = field(default_factory=dict)


def _restored(ending: Ending, losses: int) -> State:
    """The state an ending restores; unknown if the tenant was lost since it was sent."""
    return ending.state if ending.losses == losses else ending.state.poisoned()


def settle(cycle: Cycle, failed: bool, aborted: bool, changes: int, losses: int) -> tuple[State | None, bool]:
    """The answer to a cycle: (the state to restore or None, whether the tenant becomes unknown).

    failed: an error came in it; aborted: the ReadyForQuery before it said the transaction had
    failed (so its COMMIT was a rollback); changes, losses: the counts now. A state is restored
    only when nothing that changes state was sent since; otherwise pgwarden cannot place what
    PostgreSQL did among what was sent after, and the tenant is unknown until SET again.

    >>> acme, globex = State({"t": "acme"}, {}), State({"t": "globex"}, {})
    >>> settle(Cycle(commit=Ending(acme, 3, 0)), False, True, 3, 0)
    (State(settings={'t': 'acme'}, backend={}, local_tenant=None, unknown=False), False)
    >>> settle(Cycle(commit=Ending(acme, 3, 0)), False, True, 4, 0)
    (None, True)
    >>> settle(Cycle(commit=Ending(acme, 3, 0)), False, False, 4, 0)  # it committed
    (None, False)
    >>> settle(Cycle(commit=Ending(acme, 3, 0), recovered=True), False, True, 3, 0)  # ROLLBACK TO, then COMMIT
    (None, False)
    >>> settle(Cycle(implicit=Ending(acme, 2, 0)), True, False, 2, 1)[0].unknown
    True
    >>> settle(Cycle(begin=5), True, False, 5, 0), settle(Cycle(begin=5), True, False, 6, 0)
    ((None, False), (None, True))
    """
    if not failed:
        if cycle.commit is None or not aborted or cycle.recovered:
            return None, False
        if cycle.commit.changes != changes:
            return None, True
        return _restored(cycle.commit, losses), False
    implicit = cycle.implicit
    state = _restored(implicit, losses) if implicit is not None and implicit.changes == changes else None
    lost = (
        cycle.watched
        or cycle.commit is not None
        or (implicit is not None and state is None)
        or (cycle.begin is not None and cycle.begin != changes)
    )
    return state, lost
