"""Cached answers in this process: least recently used first out, bounded in bytes and by age."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import NamedTuple


class Entry(NamedTuple):
    """An answer and the signature (generation and table versions) it was read under."""

    signature: str
    answer: bytes
    expires: float  # time.monotonic()


class Answers:
    """key -> Entry, at most `max_bytes` of answers (keys count as 100 bytes each)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[object, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: object) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: object, signature: str, answer: bytes, ttl_s: float) -> None:
        cost = len(answer) + 100
        if cost > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = Entry(signature, answer, time.monotonic() + ttl_s)
        self.size += cost
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: object) -> None:
        entry = self._entries.pop(key)
        self.size -= len(entry.answer) + 100

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0
