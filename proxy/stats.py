"""Query statistics by fingerprint (SHOW QUERIES) and the slow-query log, aggregated off the hot path."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path

import pglast.parser
from pydantic import BaseModel, ConfigDict, Field

from proxy.audit import redact
from proxy.slowlog import redact_plan

log = logging.getLogger("pgwarden.slow")
MAX_FINGERPRINTS = 5000
MAX_PENDING = 50_000


class SlowQueryConfig(BaseModel):
    """`slow_query:` in the proxy config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_ms: float = Field(200.0, gt=0, description="Statements slower than this are logged.")
    path: Path | None = Field(None, description="JSON Lines file for slow statements; omitted: the log.")
    explain: bool = Field(False, description=(
        "Also log the plan of slow SELECTs: EXPLAIN (FORMAT JSON) on a separate control-plane "
        "connection (no ANALYZE: nothing is run again)."))


class QueryStats:
    """The hot path appends (text, seconds, rows); `flush` (once a second) fingerprints and counts."""

    def __init__(self, slow: SlowQueryConfig | None, latency=None, explainer=None) -> None:
        self.slow = slow
        self.latency = latency  # a histogram's observe, fed at flush time
        self.explainer = explainer  # async (sql, database) -> plan JSON text
        self._tasks: set = set()
        self.pending: deque[tuple[str, float, str]] = deque(maxlen=MAX_PENDING)
        self.by_fingerprint: dict[str, dict] = {}
        self._fingerprints: dict[str, str] = {}

    def observe(self, sql: str, seconds: float, where: str) -> None:
        self.pending.append((sql, seconds, where))

    def flush(self) -> None:
        """Aggregate what was observed; write slow statements out."""
        while self.pending:
            sql, seconds, where = self.pending.popleft()
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
            if self.slow is not None and seconds * 1000 >= self.slow.threshold_ms:
                self._slow(fp, entry["query"], seconds, where, sql)

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

    def _slow(self, fp: str, query: str, seconds: float, where: str, sql: str = "") -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fingerprint": fp,
                  "duration_ms": round(seconds * 1000, 3), "where": where, "route": "primary",
                  "query": query}
        if self.slow is not None and self.slow.explain and self.explainer is not None \
                and sql.lstrip()[:6].lower() in ("select", "with ", "with\n", "table "):
            self._explain(record, sql, where.rsplit("@", 1)[-1])
            return
        self._write(record)

    def _explain(self, record: dict, sql: str, database: str) -> None:
        import asyncio

        async def run() -> None:
            try:
                record["plan"] = redact_plan(json.loads(await self.explainer(sql, database)))
            except Exception as exc:  # the plan is a courtesy: its failure is recorded, not raised
                record["plan_error"] = str(exc)[:300]
            self._write(record)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, record: dict) -> None:
        if self.slow is not None and self.slow.path is not None:
            try:
                with open(self.slow.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                return
            except OSError as exc:
                log.warning("cannot write the slow-query log %s: %s", self.slow.path, exc)
        log.warning("slow statement: %s", json.dumps(record))

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
