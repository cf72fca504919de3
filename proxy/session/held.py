"""What a backend may hold under each statement name of a policed client, until PostgreSQL's answers settle it (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Versions(Generic[T]):
    """For each statement name, every statement a Parse sent for it since the last one
    PostgreSQL is known to hold, oldest first, with the serial of its Parse (None: a Close).

    A Parse of a name that exists fails (42P05) and keeps the old statement; a Parse or Close
    skipped after an error earlier in its cycle changes nothing. So until the Query or Sync
    that carried it ends without an error (`accepted`), the backend may hold any of them, and
    a Bind (or SQL EXECUTE) in a later cycle must pass the checks of each (`candidates`). A
    Bind in the same cycle as the Parse runs only if the Parse succeeded: `latest` is exact.
    Under transaction pooling a named statement is pgwarden's own mapping: `sure`, no doubt.

    >>> v = Versions(); v.sent("s1", "insert"); v.accepted({"s1": 1}); v.sent("s1", "select")
    1
    2
    >>> v.latest("s1"), v.candidates("s1")
    ('select', ['insert', 'select'])
    >>> v.accepted({"s1": 2}); v.candidates("s1")
    ['select']
    >>> v.sent("s1", None); v.candidates("s1"), v.latest("s1")
    3
    (['select'], None)
    >>> v.accepted({"s1": 3}); v.candidates("s1"), "s1" in v.held
    ([], False)
    """

    held: dict[str, list[tuple[int, T | None]]] = field(default_factory=dict)
    serial: int = 0

    def sent(self, name: str, statement: T | None, sure: bool = False) -> int:
        """A Parse (a Close: None) of `name` was sent; its serial."""
        self.serial += 1
        if sure:
            if statement is None:
                self.held.pop(name, None)
            else:
                self.held[name] = [(self.serial, statement)]
        else:
            self.held.setdefault(name, []).append((self.serial, statement))
        return self.serial

    def latest(self, name: str) -> T | None:
        """The last statement sent for `name` (None: none, or it was closed since)."""
        entries = self.held.get(name)
        return entries[-1][1] if entries else None

    def candidates(self, name: str) -> list[T]:
        """Every statement the backend may hold under `name`."""
        return [s for _, s in self.held.get(name, ()) if s is not None]

    def accepted(self, sent: dict[str, int]) -> None:
        """A cycle ended without an error: each name holds what its last Parse (serial) in it sent."""
        for name, serial in sent.items():
            kept = [entry for entry in self.held.get(name, ()) if entry[0] >= serial]
            if kept and kept[0][1] is None:
                kept = kept[1:]
            if kept:
                self.held[name] = kept
            else:
                self.held.pop(name, None)
