"""Query statistics by fingerprint (SHOW QUERIES), aggregated off the hot path."""

from __future__ import annotations

from collections import deque

from proxy.audit.redact import redact
from proxy.wire import protocol
from rewriter import pgparser

MAX_FINGERPRINTS = 5000
MAX_PENDING = 50_000
COLUMNS = ["fingerprint", "calls", "total_ms", "mean_ms", "p95_ms", "max_ms", "rows", "refusals", "cache_hits", "query"]


def statement_text(msg: bytes) -> str:
    """The SQL of a Query or Parse message."""
    return protocol.decode_query(msg) if msg[0] == ord("Q") else protocol.decode_parse(msg).query


class QueryStats:
    """The hot path appends (text, seconds, rows, cached); `flush` (once a second) fingerprints and counts.

    Memory is bounded: at most MAX_FINGERPRINTS entries (the least called is evicted for a new
    one), each keeping its last 200 durations for the p95."""

    def __init__(self, latency=None) -> None:
        self.latency = latency  # a histogram's observe, fed at flush time
        self.pending: deque[tuple[str | bytes, float | None, int, bool]] = deque(maxlen=MAX_PENDING)
        self.by_fingerprint: dict[str, dict] = {}
        self._fingerprints: dict[str, str] = {}

    def observe(self, sql: str | bytes, seconds: float, rows: int = 0, cached: bool = False) -> None:
        """A statement answered (its text, or the Query/Parse message carrying it): its duration,
        rows returned or affected, rewrite-cache hit."""
        self.pending.append((sql, seconds, rows, cached))

    def refusal(self, sql: str) -> None:
        """A statement the policy refused (it never reached PostgreSQL)."""
        self.pending.append((sql, None, 0, False))

    def flush(self) -> None:
        """Aggregate what was observed."""
        while self.pending:
            sql, seconds, rows, cached = self.pending.popleft()
            entry = self._entry(sql if isinstance(sql, str) else statement_text(sql))
            if seconds is None:
                entry["refusals"] += 1
                continue
            if self.latency is not None:
                self.latency(seconds)
            entry["calls"] += 1
            entry["rows"] += rows
            entry["cache_hits"] += cached
            entry["total_s"] += seconds
            entry["max_s"] = max(entry["max_s"], seconds)
            entry["recent"].append(seconds)

    def _entry(self, sql: str) -> dict:
        fp = self._fingerprint(sql)
        entry = self.by_fingerprint.get(fp)
        if entry is None:
            if len(self.by_fingerprint) >= MAX_FINGERPRINTS:
                self._evict()
            entry = self.by_fingerprint[fp] = {
                "calls": 0,
                "total_s": 0.0,
                "max_s": 0.0,
                "rows": 0,
                "refusals": 0,
                "cache_hits": 0,
                "recent": deque(maxlen=200),
                "query": redact(sql),
            }
        return entry

    def _fingerprint(self, sql: str) -> str:
        fp = self._fingerprints.get(sql)
        if fp is None:
            try:
                fp = pgparser.fingerprint(sql)
            except Exception:  # not parseable: its redacted text is its identity
                fp = redact(sql)[:200]
            if len(self._fingerprints) > 20_000:
                self._fingerprints.clear()
            self._fingerprints[sql] = fp
        return fp

    def _evict(self) -> None:
        entries = self.by_fingerprint
        least = min(entries, key=lambda k: entries[k]["calls"] + entries[k]["refusals"])
        del self.by_fingerprint[least]

    def rows(self, top: int = 50) -> list[list[object]]:
        """SHOW QUERIES rows (COLUMNS): the statements that took most time first."""
        ranked = sorted(self.by_fingerprint.items(), key=lambda kv: -kv[1]["total_s"])[:top]
        out = []
        for fp, e in ranked:
            recent = sorted(e["recent"])
            p95 = recent[min(len(recent) - 1, int(len(recent) * 0.95))] if recent else 0.0
            mean = e["total_s"] / e["calls"] if e["calls"] else 0.0
            out.append(
                [
                    fp,
                    e["calls"],
                    round(e["total_s"] * 1000, 3),
                    round(mean * 1000, 3),
                    round(p95 * 1000, 3),
                    round(e["max_s"] * 1000, 3),
                    e["rows"],
                    e["refusals"],
                    e["cache_hits"],
                    e["query"][:300],
                ]
            )
        return out
