"""Query statistics by fingerprint (SHOW QUERIES), aggregated off the hot path."""

from __future__ import annotations

from collections import deque

import pglast.parser

from proxy.audit import redact

MAX_FINGERPRINTS = 5000
MAX_PENDING = 50_000


class QueryStats:
    """The hot path appends (text, seconds); `flush` (once a second) fingerprints and counts."""

    def __init__(self, latency=None) -> None:
        self.latency = latency  # a histogram's observe, fed at flush time
        self.pending: deque[tuple[str, float]] = deque(maxlen=MAX_PENDING)
        self.by_fingerprint: dict[str, dict] = {}
        self._fingerprints: dict[str, str] = {}

    def observe(self, sql: str, seconds: float) -> None:
        self.pending.append((sql, seconds))

    def flush(self) -> None:
        """Aggregate what was observed."""
        while self.pending:
            sql, seconds = self.pending.popleft()
            if self.latency is not None:
                self.latency(seconds)
            fp = self._fingerprint(sql)
            entry = self.by_fingerprint.get(fp)
            if entry is None:
                if len(self.by_fingerprint) >= MAX_FINGERPRINTS:
                    self._evict()
                entry = self.by_fingerprint[fp] = {"calls": 0, "total_s": 0.0, "max_s": 0.0,
                                                   "recent": deque(maxlen=200), "query": redact(sql)}
            entry["calls"] += 1
            entry["total_s"] += seconds
            entry["max_s"] = max(entry["max_s"], seconds)
            entry["recent"].append(seconds)

    def _fingerprint(self, sql: str) -> str:
        fp = self._fingerprints.get(sql)
        if fp is None:
            try:
                fp = pglast.parser.fingerprint(sql)
            except Exception:  # not parseable: its redacted text is its identity
                fp = redact(sql)[:200]
            if len(self._fingerprints) > 20_000:
                self._fingerprints.clear()
            self._fingerprints[sql] = fp
        return fp

    def _evict(self) -> None:
        least = min(self.by_fingerprint, key=lambda k: self.by_fingerprint[k]["calls"])
        del self.by_fingerprint[least]

    def rows(self, top: int = 50) -> list[list[object]]:
        """SHOW QUERIES: the statements that took most time, with calls, mean and p95."""
        ranked = sorted(self.by_fingerprint.items(), key=lambda kv: -kv[1]["total_s"])[:top]
        out = []
        for fp, e in ranked:
            recent = sorted(e["recent"])
            p95 = recent[min(len(recent) - 1, int(len(recent) * 0.95))] if recent else 0.0
            out.append([fp, e["calls"], round(e["total_s"] * 1000, 3),
                        round(e["total_s"] / e["calls"] * 1000, 3), round(p95 * 1000, 3),
                        round(e["max_s"] * 1000, 3), e["query"][:300]])
        return out
