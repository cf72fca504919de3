"""Whether a decoded commit is visible to new snapshots yet: PostgreSQL writes the commit record before it
takes the transaction out of the running set, so the WAL can report a commit a fresh query cannot see."""

from __future__ import annotations

from typing import NamedTuple

_LOW = 0xFFFF_FFFF
_HALF = 1 << 31

SNAPSHOT_SQL = "SELECT pg_current_snapshot()::text"


class Snapshot(NamedTuple):
    """pg_current_snapshot(): transactions below xmin are finished, at or above xmax not yet; between,
    those in `running` still run."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """
        >>> snap = Snapshot.parse("750:760:751,755")
        >>> snap.xmin, snap.xmax, sorted(snap.running)
        (750, 760, [751, 755])
        """
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def full(self, xid: int) -> int:
        """A 32-bit xid (as pgoutput's Begin has it) widened with the epoch of the snapshot's xmax.

        >>> Snapshot(5, (3 << 32) + 10, frozenset()).full(7) == (3 << 32) + 7
        True
        >>> Snapshot(5, (3 << 32) + 10, frozenset()).full(0xFFFF_FFF0) == (2 << 32) + 0xFFFF_FFF0
        True
        """
        wide = (self.xmax & ~_LOW) | (xid & _LOW)
        if wide > self.xmax + _HALF:
            wide -= 1 << 32
        elif wide < self.xmax - _HALF:
            wide += 1 << 32
        return wide

    def sees(self, xid: int) -> bool:
        """Does a query taking this snapshot see what the transaction `xid` (32 bits) committed?

        >>> snap = Snapshot.parse("750:760:751,755")
        >>> [snap.sees(x) for x in (700, 751, 752, 755, 760, 800)]
        [True, False, True, False, False, False]
        """
        wide = self.full(xid)
        return wide < self.xmin or (wide < self.xmax and wide not in self.running)
