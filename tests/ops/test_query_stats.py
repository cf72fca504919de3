"""QueryStats: statements grouped by fingerprint, p95 from recent durations, bounded memory."""

from __future__ import annotations

from proxy.ops import stats
from proxy.ops.stats import COLUMNS, QueryStats
from proxy.wire import protocol


def by_query(qs: QueryStats) -> dict[str, dict[str, object]]:
    return {row[-1]: dict(zip(COLUMNS, row)) for row in qs.rows(top=100)}


def test_literals_share_a_fingerprint_with_rows_refusals_and_cache_hits():
    observed: list[float] = []
    qs = QueryStats(observed.append)
    for i in range(1, 101):
        qs.observe(f"select * from t where id = {i}", i / 10_000, rows=2, cached=i > 1)
    qs.refusal("select * from t where id = 7")
    qs.observe("select now()", 0.6)
    qs.flush()
    rows = by_query(qs)
    assert len(rows) == 2 and len(observed) == 101  # the refusal feeds no latency
    first = qs.rows()[0]
    assert "now()" in first[-1]  # one 600 ms call outranks 100 totalling 505 ms
    ids = next(r for q, r in rows.items() if "from t" in q)
    assert (ids["calls"], ids["rows"], ids["refusals"], ids["cache_hits"]) == (100, 200, 1, 99)
    assert (ids["total_ms"], ids["mean_ms"], ids["p95_ms"], ids["max_ms"]) == (505.0, 5.05, 9.6, 10.0)
    assert ids["query"] == "select * from t where id = ?"  # literals are redacted


def test_memory_is_capped_by_evicting_the_least_called(monkeypatch):
    monkeypatch.setattr(stats, "MAX_FINGERPRINTS", 3)
    qs = QueryStats()
    for _ in range(3):
        qs.observe("select a from t", 0.001)
        qs.observe("select b from t", 0.001)
    qs.observe("select c from t", 0.001)
    qs.observe("select d from t", 0.001)  # evicts c, the least called
    qs.flush()
    kept = " ".join(by_query(qs))
    assert len(qs.by_fingerprint) == 3
    assert " a " in kept and " b " in kept and " d " in kept and " c " not in kept


def test_a_message_shaped_on_the_hot_path_is_not_shaped_again_at_flush(monkeypatch):
    shapes = stats.Shapes(cap=3)
    qs = QueryStats(shapes=shapes)
    msgs = [protocol.query(f"select * from t where id = {i}") for i in range(5)]
    for msg in msgs[:2]:
        assert shapes.of(msg) == (stats.statement_text(msg), "select * from t where id = 0")  # (as the cache does)
    shaped: list[str] = []
    real = stats.literal_key
    monkeypatch.setattr(stats, "literal_key", lambda sql: shaped.append(sql) or real(sql))
    for msg in msgs[:2]:
        qs.observe(msg, 0.001)
    qs.flush()
    assert shaped == []  # (taken on the hot path; a flush starts a new generation)
    shapes.of(msgs[1])  # (used again: kept)
    qs.flush()  # (msgs[0] is forgotten now)
    for msg in msgs:
        qs.observe(msg, 0.001)
    qs.flush()
    assert len(shaped) == 4 and stats.statement_text(msgs[1]) not in shaped
    assert by_query(qs)["select * from t where id = ?"]["calls"] == 7
