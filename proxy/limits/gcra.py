"""The generic cell rate algorithm (GCRA), pure: a theoretical arrival time (TAT) per bucket, no timers."""

from __future__ import annotations

import math
from typing import NamedTuple

_EPSILON = 1e-9  # float rounding must not cost a statement at exactly the boundary


class Admitted(NamedTuple):
    """How many of the statements asked for may run now, the bucket's new TAT, and when the next one may."""

    admitted: int
    tat: float
    retry_after: float  # seconds from now until one more statement would be admitted (0 when it would be now)


def gcra(now: float, tat: float, interval: float, burst: int, n: int = 1) -> Admitted:
    """Admit up to `n` statements at `now` for a bucket of one per `interval` seconds, `burst` at once.

    A statement is admitted when, after it, the TAT is at most `burst` intervals ahead of now; so
    in any window of t seconds at most t / interval + burst are admitted.

    >>> first = gcra(now=10.0, tat=0.0, interval=0.1, burst=2, n=3)
    >>> first.admitted, round(first.tat, 6), round(first.retry_after, 6)
    (2, 10.2, 0.1)
    >>> gcra(now=10.1, tat=10.2, interval=0.1, burst=2, n=1).admitted
    1
    """
    base = max(tat, now)
    room = math.floor((now + burst * interval - base) / interval + _EPSILON)
    count = max(0, min(n, room))
    new_tat = base + count * interval
    return Admitted(count, new_tat, max(0.0, new_tat + interval - burst * interval - now))


def most_admitted(now: float, buckets: list[tuple[float, float, int]], n: int) -> tuple[int, int]:
    """The statements (of `n`) every bucket `(tat, interval, burst)` admits, and the bucket that admits
    fewest (its index; -1 when all admit `n`).

    >>> most_admitted(0.0, [(0.0, 0.01, 10), (0.0, 0.5, 2)], 5)
    (2, 1)
    """
    count, which = n, -1
    for index, (tat, interval, burst) in enumerate(buckets):
        admitted = gcra(now, tat, interval, burst, n).admitted
        if admitted < count:
            count, which = admitted, index
    return count, which
