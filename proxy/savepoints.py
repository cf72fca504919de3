"""Session state inside a transaction: what ROLLBACK TO SAVEPOINT and RELEASE keep or restore (pure)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class State:
    """What a rollback restores: the client's and its backend's settings, SET LOCAL's tenant,
    and whether the tenant is unknown (pgwarden could not tell what PostgreSQL kept)."""

    settings: dict[str, str]
    backend: dict[str, str]
    local_tenant: str | None = None
    unknown: bool = False

    def poisoned(self) -> "State":
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
    return frames[:at + 1], frames[at][1]


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
