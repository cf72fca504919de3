"""Which primary candidate takes writes: a pure choice from what the last checks found."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Writable:
    """A reachable primary candidate found out of recovery, on `timeline`."""

    name: str
    timeline: int


@dataclass(frozen=True, slots=True)
class Choice:
    """The candidate that takes writes (None: none may) and the writable ones that never may."""

    primary: str | None
    timeline: int  # the chosen one's (the floor passed in when none is chosen)
    fenced: frozenset[str]


def choose_primary(writable: Iterable[Writable], current: str | None, floor: int = 0) -> Choice:
    """The highest timeline among the writable candidates, `current` on a tie (else the first one given).

    Every other writable candidate is fenced: one on a lower timeline is an old primary that came
    back after a promotion, one on the same timeline a server that should not be writable. A
    candidate below `floor` (the highest timeline ever chosen) is fenced even when it is alone, so
    an old primary never takes writes back when the promoted one goes down.

    >>> choose_primary([Writable("a", 1), Writable("b", 2)], current="a")
    Choice(primary='b', timeline=2, fenced=frozenset({'a'}))
    >>> choose_primary([Writable("a", 2), Writable("b", 2)], current="b").primary
    'b'
    >>> choose_primary([Writable("a", 1)], current=None, floor=2)
    Choice(primary=None, timeline=2, fenced=frozenset({'a'}))
    """
    seen = list(writable)
    eligible = [w for w in seen if w.timeline >= floor]
    if not eligible:
        return Choice(None, floor, frozenset(w.name for w in seen))
    top = max(w.timeline for w in eligible)
    best = [w for w in eligible if w.timeline == top]
    chosen = next((w for w in best if w.name == current), best[0])
    return Choice(chosen.name, top, frozenset(w.name for w in seen if w.name != chosen.name))
